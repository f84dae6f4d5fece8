"""The fanotify reader lets a flood's events merge in the kernel's queue, and reads a lone event at once.

ReadPacing on its own (when it rests), and a real fanotify group on a real directory that a
child process opens one tagged file in 20,000 times: the reader rested, and read far fewer
events than the opens made (the kernel merged the repeats while it rested); a lone open after
the flood is still read. Before, each open
woke the reader, which read it alone and took the CPU from the opener to do so.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.sensors.fanotify import Access, FanotifySensor
from agent.sensors.pacing import ReadPacing


def test_a_run_of_quick_wake_ups_makes_the_reader_rest_and_a_quiet_moment_ends_it() -> None:
    pacing = ReadPacing(pause=0.002, quick=0.001, streak=3)
    now = 100.0
    rests = []
    for _ in range(6):  # each wake-up 0.1 ms after the reader went back to wait
        pacing.idle(now)
        now += 0.0001
        pacing.woke(now)
        rests.append(pacing.rest())
    assert rests == [0.0, 0.0, 0.002, 0.002, 0.002, 0.002]  # from the third in a row
    pacing.idle(now)
    pacing.woke(now + 0.5)  # a lone event after a quiet moment: read at once
    assert pacing.rest() == 0.0
    assert pacing.pauses == 4


def test_an_event_that_must_not_wait_keeps_the_reader_prompt() -> None:
    pacing = ReadPacing(pause=0.002, quick=0.001, streak=2)
    for now in (1.0, 1.0001, 1.0002):
        pacing.idle(now)
        pacing.woke(now)
    pacing.urgent()  # an exec, a write on removable media: its process is read while it lives
    assert pacing.rest() == 0.0
    pacing.idle(1.0003)
    pacing.woke(1.0003)
    assert pacing.rest() == 0.0  # the run starts again
    pacing.idle(1.0004)
    pacing.woke(1.0004)
    assert pacing.rest() == 0.002


def test_pacing_off_never_rests() -> None:
    pacing = ReadPacing(pause=0.0, streak=0)
    pacing.idle(1.0)
    pacing.woke(1.0)
    assert pacing.rest() == 0.0


@pytest.mark.root
def test_a_flood_of_opens_is_read_merged_and_the_next_lone_open_at_once(tmp_path: Path) -> None:
    tagged = tmp_path / "customers.db"
    tagged.write_bytes(b"x" * 100)
    lone = tmp_path / "lone.db"
    lone.write_bytes(b"y" * 100)
    seen: list[Access] = []
    lone_seen = threading.Event()

    def on_tagged(access: Access) -> None:
        seen.append(access)
        if access.path == str(lone):
            lone_seen.set()

    sensor = FanotifySensor(tagged_as=lambda p: ("db",) if p.startswith(str(tmp_path)) else None,
                            is_removable=lambda _p: False, on_tagged=on_tagged,
                            on_removable=lambda _a: None)
    sensor.start()
    try:
        sensor.mark_dir(str(tmp_path))
        opens = 20_000
        # by another process: the sensor leaves its own process's opens out
        subprocess.run([sys.executable, "-c", "import os, sys\nfor _ in range(int(sys.argv[2])):\n"
                        "    os.close(os.open(sys.argv[1], os.O_RDONLY))", str(tagged), str(opens)],
                       check=True, timeout=60)
        # queued after the whole flood: once it is handled, so is every event before it
        subprocess.run(["cat", str(lone)], check=True, capture_output=True, timeout=10)
        assert lone_seen.wait(20)
        flood = sum(1 for a in seen if a.path == str(tagged))
        assert sensor.pacing.pauses > 0
        assert 0 < flood < opens // 4  # merged while the reader rested (an open and its close, repeats)
    finally:
        sensor.stop()
