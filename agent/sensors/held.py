"""HeldFiles: descriptors of just-written tagged files, kept for the agent's own read of them.

fanotify hands its reader a descriptor on every file it reports, opened by the kernel for the
agent with file notifications off: reading the file through a copy of it reports nothing.
Reopening the path instead, as the content catalog does to fingerprint a file written a moment
ago, is an open and a close that fanotify reports back to the reader (which wakes, reads and
drops them: its own pid), and that inotify reports to the file sensor's reader without fanotify.
A held descriptor is used only while its path still names the same file (device and inode);
they are bounded in number and age (each keeps its file's blocks and its file system busy).
"""

# Per-file hot path: os calls, not a Path object per file.
# ruff: noqa: PTH116

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

# a FIFO put where a tagged file was must not hang the agent's own read of it: non-blocking
_OWN_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_T = TypeVar("_T")

MAX_HELD = 4096
MAX_AGE = 10.0  # seconds; the catalog reads a burst at most 2 s after its first file


class HeldFiles:
    """Descriptors by path, oldest first; the taker closes what it takes."""

    def __init__(self, limit: int = MAX_HELD, max_age: float = MAX_AGE) -> None:
        self._wanted = limit
        self._limit = _bound(limit)
        self._max_age = max_age
        self._lock = threading.Lock()
        self._fds: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fds)

    def hold(self, path: str, fd: int) -> None:
        """Keep a copy of `fd`, open on the file now at `path` (in place of one held before).
        Past the bound nothing new is held: the oldest are the next to be read."""
        now = time.monotonic()
        stale = self._expired(now)
        with self._lock:
            if path not in self._fds and len(self._fds) >= self._limit:
                # the descriptor limit may have been lifted since (fanotify lifts it after the
                # index, and with it this, was made: 1,024 under systemd gave a bound of 128)
                self._limit = _bound(self._wanted)
            if path not in self._fds and len(self._fds) >= self._limit:
                held = None
            else:
                try:
                    held = os.dup(fd)  # not inherited by children (os.dup sets close-on-exec)
                except OSError:
                    held = None
                else:
                    old = self._fds.pop(path, None)
                    if old is not None:
                        stale.append(old[0])
                    self._fds[path] = (held, now)
        _close(stale)

    def take(self, path: str) -> int | None:
        """The descriptor held for `path`, now the caller's to close, if `path` still names the
        file it is open on; None otherwise (the caller opens the path)."""
        stale = self._expired(time.monotonic())
        with self._lock:
            entry = self._fds.pop(path, None)
        _close(stale)
        if entry is None:
            return None
        fd = entry[0]
        try:
            named, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
            same = (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
        except OSError:
            same = False
        if not same:
            os.close(fd)  # renamed over, deleted: the path is another file now, or none
            return None
        return fd

    def drop(self, path: str) -> None:
        """`path` (a file, or a directory: everything below it) is gone: let its files go."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            gone = [p for p in self._fds if p == path or p.startswith(prefix)] if self._fds else []
            fds = [self._fds.pop(p)[0] for p in gone]
        _close(fds)

    def clear(self) -> None:
        """Close every held descriptor."""
        with self._lock:
            fds = [fd for fd, _at in self._fds.values()]
            self._fds.clear()
        _close(fds)

    def _expired(self, now: float) -> list[int]:
        out: list[int] = []
        with self._lock:
            while self._fds:
                path, (fd, at) = next(iter(self._fds.items()))
                if now - at < self._max_age:
                    break
                del self._fds[path]
                out.append(fd)
        return out


def _bound(limit: int) -> int:
    """`limit`, but never more than an eighth of the descriptors the process may open now."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return limit if soft == resource.RLIM_INFINITY else min(limit, soft // 8)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# (device, inode) -> access time (ns) the agent's own read left on a file, for the reads it could
# not make without touching it (O_NOATIME refused: a file of another owner without CAP_FOWNER)
MAX_OWN_READS = 65536
_own_atimes: OrderedDict[tuple[int, int], int] = OrderedDict()
_own_lock = threading.Lock()


def own_read(path: str, read: Callable[[int], _T], held: int | None = None) -> _T | None:
    """`read(fd)` on `path` opened (or on `held`, open on it already), then closed."""
    try:
        fd = held if held is not None else _open_own(path)
    except OSError:
        return None
    try:
        return read(fd)
    except OSError:
        return None
    finally:
        _note_own(fd)
        os.close(fd)


def _note_own(fd: int) -> None:
    # only a read that could move the access time: one through O_NOATIME left it as someone
    # else's read had set it (kept, it would have passed that read off as the agent's), and a
    # record per file the catalog reads was 4.5 MiB of an agent with 20,000 tagged files
    try:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NOATIME:
            return
        st = os.fstat(fd)
    except OSError:
        return
    with _own_lock:
        _own_atimes[(st.st_dev, st.st_ino)] = st.st_atime_ns
        _own_atimes.move_to_end((st.st_dev, st.st_ino))
        while len(_own_atimes) > MAX_OWN_READS:
            _own_atimes.popitem(last=False)


def read_by_agent(st: os.stat_result) -> bool:
    """Whether the file's access time is the one the agent's own read left: that read is not
    someone reading a new tagged directory before its watch was in place (newdirs.py)."""
    with _own_lock:
        return _own_atimes.get((st.st_dev, st.st_ino)) == st.st_atime_ns


def _open_own(path: str) -> int:
    """Open a tagged file for the agent's own read without touching its access time where we
    may (the owner's, or CAP_FOWNER): the access time tells a reader of a new tagged directory
    that nobody watched yet (newdirs.py) from the agent reading what appeared there."""
    try:
        return os.open(path, _OWN_OPEN | os.O_NOATIME)
    except PermissionError:
        return os.open(path, _OWN_OPEN)
