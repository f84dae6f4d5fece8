"""File and program names an insider chooses: bytes that are not UTF-8, newlines, escapes, a
name ending in " (deleted)" (what /proc appends to the name of a file that has none left).

Python holds such a name with lone surrogates, which protobuf refuses; each event about the
file (or by the program) must still be built, with the bytes shown as `\\xNN`, so a tagged
file named `secret\\xff.csv` copied to a stick by a program named `c\\xff` is reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.sensors.recorder import Running

pytestmark = pytest.mark.root

NAMES = [b"bad\xff\xfe.csv", b"nl\nforged.csv", b"esc\x1b[31m.csv", b"-dash|x=y\\]}.csv",
         b"loot.db (deleted)"]


def test_names_that_are_not_utf8_are_reported_through_open_write_and_copy(
        loop_stick: Any, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    (root / "d").mkdir(parents=True)
    sources = []
    for i, name in enumerate(NAMES):
        path = root / "d" / os.fsdecode(name)  # held with surrogates, written as the bytes
        path.write_bytes(os.urandom(4000 + 333 * i))
        sources.append(str(path))
    program = str(tmp_path / os.fsdecode(b"c\xff"))  # a cp of its own name
    shutil.copy("/usr/bin/cp", program)
    config = AgentConfig(tags={str(root): ["db"]},
                         sensors=SensorSettings.model_validate({"mass_read_files": 40}))
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


_TMPFILE_WRITER = r"""
import ctypes, os, sys
src, dst = sys.argv[1], sys.argv[2]
data = os.open(src, os.O_RDONLY)
fd = os.open(os.path.dirname(dst), os.O_TMPFILE | os.O_WRONLY, 0o644)  # no name yet: 'dir/#INODE'
os.sendfile(fd, data, 0, os.fstat(data).st_size)
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
if libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, dst.encode(), AT_SYMLINK_FOLLOW):
    sys.exit(f"linkat: {os.strerror(ctypes.get_errno())}")
os.close(fd)
"""


def test_an_unnamed_file_linked_onto_the_stick_is_reported_under_its_name(
        loop_stick: Any, tmp_path: Path) -> None:
    """open(O_TMPFILE) on the stick, write, linkat, close: the close-after-write's descriptor
    reads as `dir/#INODE (deleted)`; the copy is reported under the name it was given."""
    root = tmp_path / "srv"
    root.mkdir()
    source = root / "customers.db"
    source.write_bytes(os.urandom(12345))
    script = tmp_path / "tmpfile_writer.py"
    script.write_text(_TMPFILE_WRITER)
    config = AgentConfig(tags={str(root): ["db"]},
                         sensors=SensorSettings.model_validate({"mass_read_files": 40}))
    stick: LoopStick = loop_stick(label=f"TF{os.getpid() % 10000}", serial=f"EGTF{os.getpid()}")
    with Running(config) as run:
        events = run.events
        stick.plug()
        point = str(stick.mount())
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))
        dest = f"{point}/quarterly.bin"
        subprocess.run([sys.executable, str(script), str(source), dest], check=True, timeout=30)
        copy = events.wait_for(events.action("file.copy", {"file.path": dest}))[0]
        assert copy["exfilguard.source.path"] == str(source)
        assert "fingerprint" in copy["exfilguard.copy.method"]
        assert not [e for e in events.events if "/#" in str(e.get("file.path", ""))]


def test_a_copy_under_a_path_longer_than_path_max_is_reported(loop_stick: Any, tmp_path: Path) -> None:
    """Directories made one `cd` at a time can nest a file deeper than PATH_MAX, where the kernel
    will not spell its path: the copy is still reported (as POINT/.../#INODE) and identified."""
    root = tmp_path / "srv"
    root.mkdir()
    source = root / "deep.db"
    source.write_bytes(os.urandom(23456))
    config = AgentConfig(tags={str(root): ["db"]},
                         sensors=SensorSettings.model_validate({"mass_read_files": 40}))
    stick: LoopStick = loop_stick(label=f"DP{os.getpid() % 10000}", serial=f"EGDP{os.getpid()}")
    with Running(config) as run:
        events = run.events
        stick.plug()
        point = str(stick.mount())
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))
        level = "d" * 200
        script = f'cd "$1" && for i in $(seq 25); do mkdir {level} && cd {level}; done && cp "$2" loot.db'
        script += " && stat -c %i loot.db && pwd | wc -c"
        out = subprocess.run(["bash", "-c", script, "-", point, str(source)], check=True,
                             capture_output=True, text=True, timeout=60).stdout.split()
        inode, depth = int(out[0]), int(out[1])
        assert depth > os.pathconf("/", "PC_PATH_MAX")
        dest = f"{point}/.../#{inode}"
        events.wait_for(events.action("file.write", {"file.path": dest}))
        copy = events.wait_for(events.action("file.copy", {"file.path": dest}))[0]
        assert copy["exfilguard.source.path"] == str(source)
        assert copy["tags"] == ["db"]
