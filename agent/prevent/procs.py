"""What the decision needs to know of a process waiting in open(): what it asked for, what it
holds open, who it is. Read from /proc while the kernel holds it (root, CAP_SYS_PTRACE).

The open's flags are read from /proc/PID/syscall, whose arguments are those of the system call
the process is blocked in: the permission event itself does not say whether the file is
opened for reading or writing.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH116, PTH123

from __future__ import annotations

import os
import platform
import struct

from agent.sensors import procinfo

# syscall number -> index of the flags argument (-1: openat2, flags in struct open_how at arg 2;
# -2: creat, always for writing)
_OPENS = {
    "x86_64": {2: 1, 257: 2, 85: -2, 437: -1, 304: 2},
    "aarch64": {56: 2, 437: -1, 265: 2},
}.get(platform.machine(), {})
_ACCMODE = 0o3
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def opens_for_writing(pid: int) -> bool | None:
    """Whether the open `pid` is blocked in asks for writing; None when it cannot be told
    (not in an open call we know, or /proc unreadable)."""
    try:
        with open(f"/proc/{pid}/syscall", "rb") as fh:
            fields = fh.read(512).split()
        number = int(fields[0])
        where = _OPENS.get(number)
        if where is None:
            return None
        if where == -2:
            return True
        if where == -1:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(int(fields[3], 16))
                flags = struct.unpack("=Q", mem.read(8))[0]
        else:
            flags = int(fields[1 + where], 16)
    except (OSError, ValueError, IndexError, struct.error):
        return None
    return (flags & _ACCMODE) in _WRITE_MODES


def open_files(pid: int) -> list[tuple[str, int, bool]]:
    """(path, st_dev, open for writing) of every regular path the process holds open."""
    out = []
    for name, target in procinfo.fd_links(pid) or ():
        if not target.startswith("/"):
            continue
        try:
            dev = os.stat(f"/proc/{pid}/fd/{name}").st_dev
        except OSError:
            continue
        flags = procinfo.fd_flags(pid, name)
        if flags is not None:
            out.append((target, dev, (flags & _ACCMODE) in _WRITE_MODES))
    return out


def open_paths(pid: int) -> list[str]:
    """Paths of the files the process holds open (no flags: the cheap look of the hot path)."""
    return [target for _, target in procinfo.fd_links(pid) or () if target.startswith("/")]


def family(pid: int) -> tuple[int, int] | None:
    """(ppid, pgid) of a live process; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def identity(pid: int) -> tuple[int, int, int, tuple[int, ...]] | None:
    """(ppid, pgid, uid, groups: primary and supplementary gids) of a live process; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        ppid, pgid = int(fields[1]), int(fields[2])
        with open(f"/proc/{pid}/status", "rb") as fh:
            status = fh.read(4096)
    except (OSError, ValueError, IndexError):
        return None
    uid, gids = -1, []
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            uid = int(line.split()[1])
        elif line.startswith(b"Gid:"):
            gids.append(int(line.split()[1]))
        elif line.startswith(b"Groups:"):
            gids += [int(g) for g in line.split()[1:]]
    return ppid, pgid, uid, tuple(gids)

