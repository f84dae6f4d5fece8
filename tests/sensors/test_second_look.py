"""A removable write judged before the fact that ties it arrived is judged again (secondlook.py).

The ordering is made, not hoped for: a program stages an encrypted copy of a tagged file in a
scratch directory and keeps it open (flushed, not closed) while another program copies it to a
real loop-device stick; the stick's write is judged first (nothing ties it: the staged file is
not derived until its writer closes it), then the writer closes the staged file. The copy's new
`file.copy` names the tagged file on byte evidence and revises the first judgement by its id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.sensors.secondlook import SecondLook, Waiting
from agent.sensors.staging import Written
from common.agentconfig import AgentConfig, Removable
from protos import exfilguard_pb2 as pb
from tests.e2e.harness import wait_for
from tests.sensors.recorder import Running

# reads a tagged file, writes it XORed (no content match) to a staged file, flushes it, says so
# in the signal file, and closes it only when told on stdin
STAGER = r"""
import sys
source, staged, signal = sys.argv[1:4]
data = open(source, "rb").read()
out = open(staged, "wb")
out.write(bytes(b ^ 0x5A for b in data))
out.flush()
with open(signal, "w") as fh:
    fh.write("staged")
sys.stdin.readline()
out.close()
"""


@pytest.mark.root
def test_a_copy_judged_before_its_staged_source_was_derived_is_judged_again(
        tmp_path: Path, loop_stick: Any) -> None:
    db = tmp_path / "db"
    db.mkdir()
    secret = db / "ledger.db"
    secret.write_bytes(os.urandom(300_000))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    staged, signal = scratch / "ledger.enc", scratch / "signal"
    with Running(AgentConfig(tags={str(db): ["database"]}, removable=Removable(include_loop=True))) as run:
        unique = time.monotonic_ns()
        stick = loop_stick(label=f"EGS{unique % 100000}", serial=f"EGSECOND{unique}")
        stick.plug()
        point = stick.mount()
        run.events.wait_for(run.events.action("device.mount", {"exfilguard.mount.point": str(point)}),
                            timeout=30)
        stager = subprocess.Popen([sys.executable, "-c", STAGER, str(secret), str(staged), str(signal)],
                                  stdin=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: signal.exists() and signal.read_text() == "staged", 30, "the staged file")
            copy = point / "ledger.bin"
            # by this (the agent's own) process's child: nothing it reads flows from the stager
            subprocess.run(["cp", str(staged), str(copy)], check=True, timeout=30)
            write = run.events.wait_for(run.events.action("file.write", {"file.path": str(copy)}),
                                        timeout=30)[0]
            look = run.sensor("second-look")
            assert isinstance(look, SecondLook)
            wait_for(lambda: look.waiting() == 1, 30, "the write waiting",
                     lambda: str([e for e in run.events.events if e.get("file.path") == str(copy)]))
            # judged without evidence: nothing, or a guess (a parent of cp that read tagged data once)
            first = run.events.matching(run.events.action("file.copy", {"file.path": str(copy)}))
            assert all(e["exfilguard.copy.identified_by"] == "lineage-process" for e in first), first
            judged = first[0]["event.id"] if first else write["event.id"]
            stager.communicate("close\n", timeout=30)  # the staged file is derived now: the late fact
        finally:
            if stager.poll() is None:
                stager.kill()
                stager.communicate(timeout=10)
        revised = run.events.wait_for(lambda e: e.get("event.action") == "file.copy"
                                      and e.get("file.path") == str(copy)
                                      and bool(e.get("exfilguard.copy.revises")), timeout=30)[0]
        assert revised["exfilguard.copy.revises"] == judged
        assert revised["exfilguard.copy.identified_by"] == "lineage-bytes"
        assert revised["exfilguard.source.path"] == str(secret)
        assert revised["device.serial"] == stick.serial
        assert "judged again" in revised["event.reason"]
        assert look.waiting() == 0


def _written(path: Path) -> tuple[Written, tuple[int, int, int, int]]:
    st = path.stat()
    return Written(path=str(path), size=st.st_size), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def test_waiting_writes_are_bounded_in_number_and_time_and_looked_at_as_they_were(tmp_path: Path) -> None:
    """At most `limit` writes wait (the oldest leaves first), none longer than `window`; a file
    written again since its judgement, or gone, is not judged again (its next close is)."""
    tied: list[str] = []

    def rejudge(waiting: Waiting, fd: int) -> bool:
        if os.pread(fd, 3, 0) != b"tie":
            return False
        tied.append(waiting.first)
        return True

    look = SecondLook(rejudge, window=60.0, limit=2)
    files = {name: tmp_path / name for name in ("a", "b", "c", "d")}
    for path in files.values():
        path.write_bytes(b"untied")
    device, mount = pb.Device(serial="S"), pb.Mount(point=str(tmp_path))
    written, key = _written(files["a"])
    look.wait(written, device, mount, "first-a", key)
    assert look.waiting() == 0  # not started: nothing waits
    look.start()
    try:
        for name in ("a", "b", "c"):
            written, key = _written(files[name])
            look.wait(written, device, mount, f"first-{name}", key)
        assert look.waiting() == 2 and look.expired == 1  # a left first
        files["b"].write_bytes(b"tie, but written again since")
        files["c"].write_bytes(b"tie")  # same size, but its modification time moved on
        assert look.look() == 0 and tied == []
        written, key = _written(files["c"])
        look.wait(written, device, mount, "first-c2", key)
        look.fact()  # what a derived file does: the thread looks again
        wait_for(lambda: tied == ["first-c2"], 10, "the tied write judged again")
        assert look.revised == 1
        files["d"].unlink()
        look.wait(Written(path=str(files["d"]), size=6), device, mount, "first-d", key)
        assert look.look() == 0  # gone: nothing to look at
    finally:
        look.stop()
    assert look.waiting() == 0
    brief = SecondLook(rejudge, window=-1.0)  # every write past its window at once
    brief.start()
    try:
        files["a"].write_bytes(b"tie")
        written, key = _written(files["a"])
        brief.wait(written, device, mount, "late", key)
        assert brief.look() == 0 and brief.expired == 1 and tied == ["first-c2"]
    finally:
        brief.stop()
