"""A carrier of tagged data for the prevention tests: a process of its own session that read a
tagged file and lives on holding it open, so the content guard keeps the sticks armed
(agent/prevent/arming.py) while a test looks at what happens to writes while they are; and
the looks at a fanotify group's marks, as the kernel lists them in fdinfo."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from agent.prevent.guard import ContentGuard
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.lineage import SourceRead
from agent.sensors.provenance import Provenance

FAN_OPEN_PERM = 0x10000

CARRIER = """
import sys
held = open(sys.argv[1], "rb")
held.read(1)
print("read", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def carrying(tagged: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process that read `tagged` and keeps it open until the block ends (then killed)."""
    proc = subprocess.Popen([sys.executable, "-c", CARRIER, str(tagged)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"read\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def derive(guard: ContentGuard, source: Path, export: Path) -> None:
    """Write `export` and have the guard's index learn it as derived from `source`, as the copy
    detector would (the responder is told at once)."""
    export.write_bytes(os.urandom(5000))
    read = SourceRead(str(source), ("database",), 5000, time.time())
    index = guard.decider.index
    assert isinstance(index, FingerprintIndex)
    index.add_derived(str(export), Provenance("exact", 1.0, (read,), 1))


def kernel_dev(point: Path) -> str:
    """The stick's device as fdinfo prints a file system mark's `sdev` (the kernel's dev_t)."""
    dev = point.stat().st_dev
    return f"{(os.major(dev) << 20) | os.minor(dev):x}"


def _marks(info: str, kind: str) -> list[tuple[str, int]]:
    """(sdev or ino, mask) of the marks of one kind ("sdev" file system, "ino" inode) in fdinfo."""
    found = []
    for line in info.splitlines():
        if line.startswith(f"fanotify {kind}:"):
            fields = dict(item.split(":", 1) for item in line.split()[1:] if ":" in item)
            found.append((fields[kind], int(fields["mask"], 16)))
    return found


def perm_marked(pid: int, point: Path) -> bool | None:
    """Whether a fanotify group of process `pid` holds FAN_OPEN_PERM on the stick's file system;
    None when the process's descriptors changed under the look (read again)."""
    sdev = kernel_dev(point)
    try:
        fds = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            info = fd.read_text()
        except OSError:
            continue
        if any(dev == sdev and mask & FAN_OPEN_PERM for dev, mask in _marks(info, "sdev")):
            return True
    return False


def group_marks(fd: int, kind: str) -> list[tuple[str, int]]:
    """This process's fanotify group `fd`: (sdev or ino, mask) of its marks of one kind."""
    return _marks(Path(f"/proc/self/fdinfo/{fd}").read_text(), kind)
