"""File and program names an insider chooses: bytes that are not UTF-8, newlines, escapes.

Python holds such a name with lone surrogates, which protobuf refuses; each event about the
file (or by the program) must still be built, with the bytes shown as `\\xNN`, so a tagged
file named `secret\\xff.csv` copied to a stick by a program named `c\\xff` is reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.sensors.recorder import Running

pytestmark = pytest.mark.root

NAMES = [b"bad\xff\xfe.csv", b"nl\nforged.csv", b"esc\x1b[31m.csv", b"-dash|x=y\\]}.csv"]


def test_names_that_are_not_utf8_are_reported_through_open_write_and_copy(
        loop_stick: Any, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    (root / "d").mkdir(parents=True)
    sources = []
    for i, name in enumerate(NAMES):
        path = os.path.join(os.fsencode(root / "d"), name)
        with open(path, "wb") as out:
            out.write(os.urandom(4000 + 333 * i))
        sources.append(os.fsdecode(path))
    program = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"c\xff"))  # a cp of its own name
    shutil.copy("/usr/bin/cp", program)
    config = AgentConfig(tags={str(root): ["db"]}, sensors=SensorSettings.model_validate({"mass_read_files": 40}))
    stick: LoopStick = loop_stick(label=f"HN{os.getpid() % 10000}", serial=f"EGHN{os.getpid()}")
    with Running(config) as run:
        events = run.events
        stick.plug()
        point = str(stick.mount())
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))
        for source in sources:
            subprocess.run([program, "--", source, point], check=True, timeout=30)
        for raw in NAMES:
            shown = raw.decode("utf-8", "backslashreplace")
            dest = f"{point}/{shown}"
            events.wait_for(events.action("file.open", {"file.path": f"{root}/d/{shown}"}))
            write = events.wait_for(events.action("file.write", {"file.path": dest}))[0]
            assert write["file.name"] == shown
            assert write["process.pid"] > 0
            copy = events.wait_for(events.action("file.copy", {"file.path": dest}))[0]
            assert copy["exfilguard.source.path"] == f"{root}/d/{shown}"
            assert copy["tags"] == ["db"]
        execs = {e.get("process.executable") for e in events.matching(events.action("file.write"))}
        assert f"{tmp_path}/c\\xff" in execs or None in execs  # exact when /proc was read in time
