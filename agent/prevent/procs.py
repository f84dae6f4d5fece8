"""What the decision needs to know of a process waiting in open(): what it asked for, what it
holds open, who it is. Read from /proc while the kernel holds it (root, CAP_SYS_PTRACE).

The open's flags are read from /proc/PID/syscall, whose arguments are those of the system call
the process is blocked in: the permission event itself does not say whether the file is
opened for reading or writing.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH116, PTH123, PTH208

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
_MAX_THREADS = 256  # threads of one process asked what they open
_PATH_BYTES = 4096
_RUNNING_TRIES = 20  # looks at a thread's syscall while it is not yet asleep
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def opens_for_writing(pid: int, path: str = "") -> bool | None:
    """Whether the open `pid` is blocked in asks for writing; None when it cannot be told
    (not in an open call we know, or /proc unreadable). /proc/PID/syscall is the main thread's:
    when that is in no open of a file named as `path` is, the threads in an open of such a file
    are asked (a thumbnailer's worker thread reading a stick while another thread writes its
    cache; an agent hashing a stick while its main thread opens its spool for writing; a worker
    writing to the stick while the main thread sits in a read open of a FIFO). When none is, a
    process of one thread is answered by its open (a name opened through a symbolic link), any
    other is not (None)."""
    name = os.fsencode(path)
    found = _thread_opens(pid, pid, name)
    if found is not None or not name:
        return found
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return None
    answers = {_thread_opens(pid, tid, name) for tid in tids[:_MAX_THREADS] if tid != pid}
    if True in answers or False in answers:
        return True in answers
    return _thread_opens(pid, pid, "") if len(tids) == 1 else None


def _thread_opens(pid: int, tid: int, name: bytes | str) -> bool | None:
    """Whether thread `tid` is in an open for writing (of the file at path `name`, when given:
    names_file)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as fh:
            fields = fh.read(512).split()
            for _ in range(_RUNNING_TRIES):
                if fields != [b"running"]:
                    break
                # it queued its event and, woken by it, the agent took its CPU before it went to
                # sleep in the open: give the CPU back for a moment, read again
                os.sched_yield()
                fields = os.pread(fh.fileno(), 512, 0).split()
        where = _OPENS.get(int(fields[0]))
        if where is None:
            return None
        opened = _opened_path(pid, int(fields[1 if where in (-2, 1) else 2], 16)) if name else b""
        if name and not names_file(opened, os.fsencode(name)):
            return None  # another open of this process: not the one asked about
        if where == -1:  # openat2: the flags are in its struct open_how
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(int(fields[3], 16))
                flags = struct.unpack("=Q", mem.read(8))[0]
            return (flags & _ACCMODE) in _WRITE_MODES
    except (OSError, ValueError, IndexError, struct.error):
        return None
    return asks_writing(fields)


def _opened_path(pid: int, address: int) -> bytes:
    """The path an open call names, read from the caller's memory (NUL and what follows too)."""
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(_PATH_BYTES)


def names_file(raw: bytes, path: bytes) -> bool:
    """Whether the NUL-terminated path at the start of `raw` (an open's argument) may name the
    file at `path` (as this agent sees it): the same path when it is absolute (a thread writing
    a staging copy of the same name elsewhere is not opening this file), the same last component
    when it is relative to a directory we do not resolve. An absolute path seen through another
    mount namespace or a symbolic link does not match: the caller then does not know."""
    arg = raw.split(b"\0", 1)[0].rstrip(b"/")
    if arg.startswith(b"/"):
        return arg == path.rstrip(b"/")
    return arg.rsplit(b"/", 1)[-1] == path.rstrip(b"/").rsplit(b"/", 1)[-1]


def path_address(fields: list[bytes]) -> int | None:
    """Where in the caller's memory the path of the open call in /proc/PID/syscall's `fields` is."""
    try:
        where = _OPENS.get(int(fields[0]))
        return None if where is None else int(fields[1 if where in (-2, 1) else 2], 16)
    except (ValueError, IndexError):
        return None


def stat_threads(stat: bytes) -> int | None:
    """The number of threads from the text of /proc/PID/stat; None when it is not that."""
    try:
        return int(stat[stat.rindex(b")") + 2:].split()[17])
    except (ValueError, IndexError):
        return None


def asks_writing(fields: list[bytes]) -> bool | None:
    """Whether the open call in /proc/PID/syscall's `fields` asks for writing; None when it
    cannot be told from them (another call, or openat2, whose flags are in the caller's memory)."""
    try:
        where = _OPENS.get(int(fields[0]))
        if where is None or where == -1:
            return None
        if where == -2:
            return True
        flags = int(fields[1 + where], 16)
    except (ValueError, IndexError):
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
            return stat_family(fh.read())
    except OSError:
        return None


def stat_family(stat: bytes) -> tuple[int, int] | None:
    """(ppid, pgid) from the text of /proc/PID/stat; None when it is not that."""
    try:
        fields = stat[stat.rindex(b")") + 2:].split()
        return int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
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

