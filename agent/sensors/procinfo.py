"""Who did it: process identity read from /proc (exact) or psutil (best effort).

fanotify hands us a pid; the process may exit a moment later, so the sensor reads
/proc/<pid> at once and says `none` when it is already gone.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH115, PTH119, PTH123

from __future__ import annotations

import dataclasses
import os
import pwd
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import psutil

from protos import exfilguard_pb2 as pb

EXACT = "exact"
INFERRED = "inferred"
NONE = "none"

_UNSET_LOGINUID = 4294967295
_CMDLINE_LIMIT = 4096  # an argv can be megabytes; an event need not be


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process as an event reports it."""

    pid: int
    ppid: int = 0
    pgid: int = 0
    executable: str = ""
    command_line: str = ""
    name: str = ""
    uid: int = -1
    loginuid: int = -1


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """Account name of a uid ('' when unknown); cached, the passwd file rarely changes."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def read_proc(pid: int) -> ProcessInfo | None:
    """Identity of a live process from /proc; None when it has already exited."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as fh:
            stat = fh.read().decode("utf-8", "replace")
        # comm may contain spaces and parentheses: split at the last ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        ppid, pgid = int(rest[1]), int(rest[2])
        uid = -1
        with open(f"{base}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    uid = int(line.split()[1])  # real uid: the person, not a setuid binary
                    break
    except (OSError, ValueError, IndexError):
        return None
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = ""  # kernel threads, or exited between reads
    try:
        with open(f"{base}/cmdline", "rb") as fh:
            raw = fh.read(_CMDLINE_LIMIT)
        cmdline = " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
    except OSError:
        cmdline = ""
    try:
        with open(f"{base}/loginuid", "rb") as fh:
            loginuid = int(fh.read().strip() or b"-1")
    except (OSError, ValueError):
        loginuid = -1
    if loginuid == _UNSET_LOGINUID:
        loginuid = -1
    return ProcessInfo(pid, ppid, pgid, exe, cmdline, comm, uid, loginuid)


def describe(event: pb.Event, info: ProcessInfo | None, attribution: str, pid: int = 0) -> None:
    """Fill process, user and login user of `event` and say how sure we are."""
    if info is None:
        # The kernel named the pid but the process was gone before /proc could be read:
        # keep the pid, and say we do not know the rest.
        if pid:
            event.process.pid = pid
        event.exfilguard.attribution = NONE
        return
    event.process.pid = info.pid
    event.process.executable = info.executable
    event.process.command_line = info.command_line
    event.process.name = info.name
    if info.ppid:
        event.process.parent.pid = info.ppid
    if info.uid >= 0:
        event.user.id = str(info.uid)
        event.user.name = user_name(info.uid)
    if info.loginuid >= 0:
        event.exfilguard.login_user.id = str(info.loginuid)
        event.exfilguard.login_user.name = user_name(info.loginuid)
    # A process that exited before /proc was read is known in part (a zombie keeps its uid and
    # name but not its executable; an exec seen by fanotify gives the executable only).
    complete = bool(info.executable) and info.uid >= 0
    event.exfilguard.attribution = attribution if complete or attribution != EXACT else INFERRED


class OpenFileIndex:
    """Best-effort attribution without fanotify: which process has a path open right now.

    One scan of every process's fds is cached briefly, so a burst of inotify events
    costs one scan, not one per event.
    """

    def __init__(self, max_age: float = 0.25) -> None:
        self._max_age = max_age
        self._lock = threading.Lock()
        self._taken = 0.0
        self._by_path: dict[str, int] = {}

    def who_has(self, path: str) -> ProcessInfo | None:
        """A process that has `path` open (None: nobody we can see)."""
        with self._lock:
            if time.monotonic() - self._taken > self._max_age:
                self._by_path = self._scan()
                self._taken = time.monotonic()
            pid = self._by_path.get(path)
        return read_proc(pid) if pid else None

    @staticmethod
    def _scan() -> dict[str, int]:
        found: dict[str, int] = {}
        me = os.getpid()
        for proc in psutil.process_iter():
            if proc.pid == me:
                continue
            try:
                for opened in proc.open_files():
                    found.setdefault(opened.path, proc.pid)
            except (psutil.Error, OSError):
                continue  # gone, or not ours to see without privilege
        return found


class ProcessCache:
    """Process identities by pid, so events handled after a short-lived process exited
    (cp, cat) still name it. A cached identity is reused only while /proc/<pid>/stat shows
    the same start time and command name (a new process, or an exec, reads afresh)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[bytes, ProcessInfo]] = {}
        self._execs: dict[int, ProcessInfo] = {}  # pid -> program it last executed (FAN_OPEN_EXEC)

    def note_exec(self, pid: int, executable: str) -> None:
        """The kernel saw `pid` execute `executable`: kept, with its uids read right now, for
        when the process has exited before one of its file events is handled."""
        name = os.path.basename(executable)
        if name.startswith("ld-") and ".so" in name:
            return  # execve opens the dynamic loader right after the program: keep the program
        uid, ppid, loginuid = _status_ids(pid)
        info = ProcessInfo(pid, ppid=ppid, executable=executable, name=name[:15], uid=uid, loginuid=loginuid)
        with self._lock:
            self._execs.pop(pid, None)
            self._execs[pid] = info
            if len(self._execs) > self._size:
                del self._execs[next(iter(self._execs))]

    def lookup(self, pid: int) -> ProcessInfo | None:
        """Identity of `pid`: live from /proc, else the last one seen, else what it executed."""
        return self._with_exec(pid, self._lookup(pid))

    def _with_exec(self, pid: int, info: ProcessInfo | None) -> ProcessInfo | None:
        if info is not None and info.executable:
            return info
        with self._lock:
            execed = self._execs.get(pid)
        if execed is None:
            return info
        if info is None:
            return execed
        return dataclasses.replace(info, executable=execed.executable)

    def _lookup(self, pid: int) -> ProcessInfo | None:
        key = _stat_key(pid)
        with self._lock:
            cached = self._cache.get(pid)
        if cached is not None and (key is None or key == cached[0]):
            return cached[1]
        if key is None:
            return None
        info = read_proc(pid)
        if info is None:
            return cached[1] if cached is not None else None
        with self._lock:
            if len(self._cache) >= self._size:
                # drop the oldest quarter: insertion order is age order
                for old in list(self._cache)[: self._size // 4]:
                    del self._cache[old]
            self._cache[pid] = (key, info)
        return info


def _status_ids(pid: int) -> tuple[int, int, int]:
    """(uid, ppid, login uid) of a live pid; -1/0/-1 for what cannot be read."""
    uid, ppid, loginuid = -1, 0, -1
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"PPid:"):
                    ppid = int(line.split()[1])
                elif line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/loginuid", "rb") as fh:
            loginuid = int(fh.read().strip() or b"-1")
    except (OSError, ValueError, IndexError):
        pass
    return uid, ppid, -1 if loginuid == _UNSET_LOGINUID else loginuid


def _stat_key(pid: int) -> bytes | None:
    """(comm, start time) of a live pid as one bytes key; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    close = stat.rfind(b")")
    fields = stat[close + 2 :].split()
    # field 22 (starttime) is index 19 after the ")"
    return stat[: close + 1] + b"|" + (fields[19] if len(fields) > 19 else b"")
