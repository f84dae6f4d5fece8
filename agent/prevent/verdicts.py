"""VerdictCache: the clean verdicts of processes writing to removable media, and what they rest on.

`cp -r` of 2,000 files asks 2,000 times whether the same `cp` carries tagged data; the full
answer reads /proc/PID/syscall, stat and status, the fd table, and the parent's and
grandparent's stat. After the first clean answer the process is remembered here:

  - by descriptors held on its /proc/PID directory (`ProcessHandle`): they follow the process
    they were opened for, not its number, so once it is gone every read fails, even if the
    number is reused: a verdict is never applied to another process (stronger than a
    (pid, start time) key, and no start time to read);
  - with the chain its verdict looked at (parent, grandparent, process group) and the lineage
    version (`DataFlow.version`) it was found clean at.

What the cache saves is reading; it decides nothing on its own. At each open the decider checks
again, cheaply, everything the full answer checks (see `Decider.allow_known`): the call's flags
and the process's parent and group from the held descriptors, its open files afresh (a derived
file's open is not heard), the tagged opens heard for its chain and group (table look-ups),
and lineage only when lineage changed since. Anything that differs sends the open to the full
decision. Tagged-open windows only close as time passes, so a clean verdict never turns
unsafe by waiting.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent.prevent import procs, syscalls

MAX_CLEAN = 128      # processes with a clean verdict remembered (each holds up to 5 descriptors)
MAX_HANDLES = 64     # openers of tagged files whose process group is read from a held descriptor
_STAT_BYTES = 1024
_SYSCALL_BYTES = 512
_NAME_BYTES = 1024  # of an open's path read from the caller's memory (a longer one: decided in full)
_RUNNING = b"running\n"  # /proc/PID/syscall of a task on a CPU
_RUNNING_TRIES = 20       # looks until the opener sleeps in its open
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class ProcessHandle:
    """Descriptors held on one process's /proc entries (its directory, `stat`; `syscall` and the
    `fd` directory when first asked), read with the GIL kept (syscalls.py). Every read fails
    once that process is gone, whatever now has its number. Thread-safe: a read and `close`
    never overlap, so a descriptor number closed (and perhaps reused) is never read."""

    __slots__ = ("_dir", "_fds", "_lock", "_mem", "_stat", "_syscall", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._lock = threading.Lock()
        self._dir = os.open(f"/proc/{pid}", _DIR_FLAGS)
        try:
            self._stat = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir)
        except OSError:
            os.close(self._dir)
            raise
        self._syscall = -1
        self._fds = -1
        self._mem = -1

    @classmethod
    def open(cls, pid: int) -> ProcessHandle | None:
        """A handle on a live process; None when it is gone (or /proc is unreadable)."""
        try:
            return cls(pid)
        except OSError:
            return None

    def family(self) -> tuple[int, int] | None:
        """(ppid, pgid) now; None once the process is gone."""
        with self._lock:
            stat = syscalls.pread(self._stat, _STAT_BYTES) if self._stat >= 0 else None
        return procs.stat_family(stat) if stat else None

    def writing(self, path: bytes = b"") -> bool | None:
        """Whether the open the process is blocked in asks for writing (procs.asks_writing);
        None when that cannot be told here. /proc/PID/syscall is the main thread's: in a process
        of more than one thread it answers only when that open names the file at `path` (the
        event's; procs.names_file), as procs.opens_for_writing asks."""
        return self.look(path)[0]

    def look(self, path: bytes | Callable[[], bytes] = b"", tries: int = _RUNNING_TRIES
             ) -> tuple[bool | None, tuple[int, int] | None]:
        """(`writing(path)`, `family()`) from one read of `syscall` and one of `stat`: a cached
        answer needs both, and `stat` is the costlier /proc read (the process's whole state).
        `path` may be a function, called only for a process of more than one thread (without a
        path such a process gets None: its main thread's open need not be the one asked about);
        `tries`: reads of a `syscall` that says "running"."""
        with self._lock:
            if self._syscall < 0:
                self._syscall = self._open("syscall", os.O_RDONLY | os.O_CLOEXEC)
            line = None
            for _ in range(tries):
                line = syscalls.pread(self._syscall, _SYSCALL_BYTES) if self._syscall >= 0 else None
                if line != _RUNNING:
                    break
                # "running": it queued its event and, woken by it, this thread took its CPU before
                # it went to sleep in the open: give the CPU back for a moment
                syscalls.yield_cpu()
            stat = syscalls.pread(self._stat, _STAT_BYTES) if self._stat >= 0 else None
            family = procs.stat_family(stat) if stat else None
            fields = line.split() if line else []
            answer = procs.asks_writing(fields) if fields else None
            if answer is None or (stat is not None and procs.stat_threads(stat) == 1):
                return answer, family
            if callable(path):
                path = path()
            if not path:
                return None, family
            address = procs.path_address(fields)
            if self._mem < 0:
                self._mem = self._open("mem", os.O_RDONLY | os.O_CLOEXEC)
            raw = syscalls.pread(self._mem, _NAME_BYTES, address) if address and self._mem >= 0 else None
        return (answer if raw is not None and procs.names_file(raw, path) else None), family

    def held_paths(self) -> list[str] | None:
        """Paths of the files the process holds open now; None once it is gone."""
        with self._lock:
            if self._fds < 0:
                self._fds = self._open("fd", _DIR_FLAGS)
            names = syscalls.names(self._fds) if self._fds >= 0 else None
            if names is None:
                return None
            targets = [syscalls.readlink(name, self._fds) for name in names]
        return [target for target in targets if target is not None and target.startswith("/")]

    def _open(self, name: str, flags: int) -> int:
        if self._dir < 0:
            return -1  # closed
        try:
            return os.open(name, flags, dir_fd=self._dir)
        except OSError:
            return -1

    def close(self) -> None:
        """Release the descriptors; idempotent."""
        with self._lock:
            for fd in (self._fds, self._syscall, self._mem, self._stat, self._dir):
                if fd >= 0:
                    syscalls.close(fd)
            self._fds = self._syscall = self._mem = self._stat = self._dir = -1


@dataclass(slots=True)
class Clean:
    """A process found not to carry tagged data, with what that verdict looked at."""

    handle: ProcessHandle
    parent: ProcessHandle | None   # held while the chain has a parent: the grandparent is its ppid
    ppid: int
    pgid: int
    gppid: int
    chain: tuple[int, ...]          # the process, its parent and grandparent (as the decider walks them)
    flow_version: int               # DataFlow.version when lineage found nothing for the chain

    def unchanged(self, family: tuple[int, int] | None = None) -> bool:
        """Whether the process lives and its parent, group and grandparent are those the verdict
        looked at (`family`: the process's (ppid, pgid) just read by `ProcessHandle.look`)."""
        if (family or self.handle.family()) != (self.ppid, self.pgid):
            return False
        if self.parent is None:
            return True
        up = self.parent.family()
        return up is not None and up[0] == self.gppid

    def close(self) -> None:
        """Release its descriptors."""
        self.handle.close()
        if self.parent is not None:
            self.parent.close()


class VerdictCache:
    """Clean verdicts by pid (bounded, oldest forgotten), and handles on recent openers of tagged
    files (their process group, read without a path look-up). Thread-safe."""

    def __init__(self, me: int) -> None:
        self._me = me
        self._lock = threading.Lock()
        self._clean: OrderedDict[int, Clean] = OrderedDict()
        self._handles: OrderedDict[int, ProcessHandle] = OrderedDict()

    def get(self, pid: int) -> Clean | None:
        """The clean verdict remembered for `pid`, if any."""
        with self._lock:
            return self._clean.get(pid)

    def remember(self, pid: int, ppid: int, pgid: int, walked: list[int], flow_version: int) -> None:
        """Remember `pid` as clean, as the full decision just found it, having walked the chain
        `walked` from that parent and group: opens the handles, and keeps them only when they
        are of those very processes (a parent that died meanwhile reparents its child)."""
        handle = ProcessHandle.open(pid)
        if handle is None:
            return
        parent = ProcessHandle.open(ppid) if len(walked) > 1 else None
        up = parent.family() if parent is not None else None
        gppid = up[0] if up is not None else 0
        clean = Clean(handle, parent, ppid, pgid, gppid, tuple(walked), flow_version)
        if ((parent is None) != (len(walked) == 1) or chain(pid, ppid, gppid, self._me) != walked
                or not clean.unchanged()):
            clean.close()
            return
        with self._lock:
            old = self._clean.pop(pid, None)
            self._clean[pid] = clean
            while len(self._clean) > MAX_CLEAN:
                self._clean.popitem(last=False)[1].close()
        if old is not None:
            old.close()

    def drop(self, pid: int) -> None:
        """Forget `pid`'s verdict."""
        with self._lock:
            clean = self._clean.pop(pid, None)
        if clean is not None:
            clean.close()

    def sweep(self) -> None:
        """Forget the verdicts of processes that are gone (and handles of gone openers)."""
        with self._lock:
            cleans = list(self._clean.items())
            handles = list(self._handles.items())
        for pid, clean in cleans:
            if clean.handle.family() is None:
                self.drop(pid)
        for pid, handle in handles:
            if handle.family() is None:
                with self._lock:
                    gone = self._handles.pop(pid, None) is handle
                if gone:
                    handle.close()

    def group_of(self, pid: int) -> int:
        """The process group of `pid` now (0 when it is gone), from a held handle: an innocent
        reader of 10,000 tagged files costs one read each, no path look-up."""
        with self._lock:
            handle = self._handles.get(pid)
        found = handle.family() if handle is not None else None
        if found is None:
            fresh = ProcessHandle.open(pid)
            found = fresh.family() if fresh is not None else None
            if fresh is not None:
                with self._lock:
                    old = self._handles.pop(pid, None)
                    self._handles[pid] = fresh
                    evicted = [self._handles.popitem(last=False)[1] for _ in
                               range(max(0, len(self._handles) - MAX_HANDLES))]
                for stale in (old, *evicted):
                    if stale is not None:
                        stale.close()
        return found[1] if found is not None else 0

    def close(self) -> None:
        """Release every descriptor held."""
        with self._lock:
            cleans, self._clean = list(self._clean.values()), OrderedDict()
            handles, self._handles = list(self._handles.values()), OrderedDict()
        for clean in cleans:
            clean.close()
        for handle in handles:
            handle.close()


def chain(pid: int, ppid: int, gppid: int, me: int) -> list[int]:
    """The process, its parent and grandparent, as far as they are neither init nor the agent
    (rsync: the receiver writes, its grandparent the sender reads)."""
    out = [pid]
    for parent in (ppid, gppid):
        if parent <= 1 or parent == me:
            break
        out.append(parent)
    return out
