"""Who did it: process identity read from /proc (exact) or psutil (best effort).

fanotify hands us a pid; the process may exit a moment later, so the sensor reads
/proc/<pid> at once and says `none` when it is already gone.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH115, PTH119, PTH208

from __future__ import annotations

import dataclasses
import os
import pwd
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import psutil

from protos import exfilguard_pb2 as pb
from protos.events import fs_text, stamped

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
    # read from its parent: a child that forked without an exec (rsync's receiver) and was gone
    # before /proc was read runs the parent's program as the parent's user
    inherited: bool = False


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """Account name of a uid ('' when unknown); cached, the passwd file rarely changes."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _read(path: str, limit: int = 4096) -> bytes:
    """The first `limit` bytes of a small /proc file (os calls: a buffered file object per
    read cost more than the kernel's work)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def fd_links(pid: int) -> list[tuple[str, str]] | None:
    """(descriptor, link target) of each file `pid` holds open, as /proc/PID/fd shows them: a
    path, or `pipe:[inode]`, `socket:[inode]`... None when the process is gone; a descriptor
    closed while being read is left out."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    links = []
    for name in names:
        try:
            links.append((name, os.readlink(f"{base}/{name}")))
        except OSError:
            continue
    return links


def fd_flags(pid: int, fd: str) -> int | None:
    """The open flags (O_WRONLY, ...) of descriptor `fd` of `pid`, from /proc/PID/fdinfo; None
    when it is closed or the process gone."""
    try:
        return int(_read(f"/proc/{pid}/fdinfo/{fd}", 256).split(b"flags:", 1)[1].split()[0], 8)
    except (OSError, ValueError, IndexError):
        return None


def read_proc(pid: int) -> ProcessInfo | None:
    """Identity of a live process from /proc; None when it has already exited."""
    base = f"/proc/{pid}"
    try:
        stat = _read(f"{base}/stat").decode("utf-8", "replace")
        # comm may contain spaces and parentheses: split at the last ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        ppid, pgid = int(rest[1]), int(rest[2])
        uid = _uid(_read(f"{base}/status"))
    except (OSError, ValueError, IndexError):
        return None
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = ""  # kernel threads, or exited between reads
    try:
        raw = _read(f"{base}/cmdline", _CMDLINE_LIMIT)
        cmdline = " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
    except OSError:
        cmdline = ""
    return ProcessInfo(pid, ppid, pgid, exe, cmdline, comm, uid, _loginuid(base))


def _uid(status: bytes) -> int:
    """The real uid in a /proc status text (the person, not a setuid binary); -1 if absent."""
    at = status.find(b"\nUid:")
    return int(status[at + 5 :].split(None, 1)[0]) if at >= 0 else -1


def _loginuid(base: str) -> int:
    try:
        loginuid = int(_read(f"{base}/loginuid").strip() or b"-1")
    except (OSError, ValueError):
        return -1
    return -1 if loginuid == _UNSET_LOGINUID else loginuid


_DESCRIBED_MAX = 512
_described: dict[tuple[ProcessInfo, str], pb.Event] = {}


def describe(event: pb.Event, info: ProcessInfo | None, attribution: str, pid: int = 0) -> None:
    """Fill process, user and login user of `event` and say how sure we are."""
    if info is None:
        # The kernel named the pid but the process was gone before /proc could be read:
        # keep the pid, and say we do not know the rest.
        if pid:
            event.process.pid = pid
        event.exfilguard.attribution = NONE
        return
    # the same process does most events of a burst: its fields are set once, then merged (a
    # fresh event has none of them set)
    key = (info, attribution)
    filled = _described.get(key)
    if filled is None:
        filled = pb.Event()
        _describe(filled, info, attribution)
        if len(_described) >= _DESCRIBED_MAX:
            _described.clear()
        _described[key] = filled
    event.MergeFrom(filled)


_SHARED_MAX = 512
_shared: dict[tuple[ProcessInfo | None, str, int, tuple[str, ...]], bytes] = {}


def attributed_event(action: str, tags: Sequence[str], info: ProcessInfo | None, attribution: str,
                     pid: int = 0, *, file: pb.File) -> pb.Event:
    """`new_event(action, tags=tags, file=file)` then `describe(event, info, attribution, pid)`,
    built at a third of the cost: what a process's events share (tags, process, user, login
    user, attribution) is kept serialized per process and tags and parsed into each event,
    where setting each field was the dearest part of a file event after the system calls."""
    key = (info, attribution, 0 if info is not None else pid, tuple(tags))
    shared = _shared.get(key)
    if shared is None:
        filled = pb.Event(tags=key[3])
        filled.event.kind = "event"
        describe(filled, info, attribution, pid)
        shared = filled.SerializeToString()
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        _shared[key] = shared
    event = pb.Event(file=file)
    event.MergeFromString(shared)
    return stamped(event, action)


def _describe(event: pb.Event, info: ProcessInfo, attribution: str) -> None:
    event.process.pid = info.pid
    event.process.executable = fs_text(info.executable)
    event.process.command_line = info.command_line
    event.process.name = fs_text(info.name)
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
    complete = bool(info.executable) and info.uid >= 0 and not info.inherited
    event.exfilguard.attribution = attribution if complete or attribution != EXACT else INFERRED


def file_owner(fd: int) -> int:
    """The uid owning the file open on `fd` (-1 if it cannot be read)."""
    try:
        return os.fstat(fd).st_uid
    except OSError:
        return -1


def owner(event: pb.Event, uid: int) -> None:
    """The user of a write whose process was gone before anything read it (the whole `rsync`
    had finished when its first event was handled): the written file's owner (`uid`), which the
    kernel set from the writer's file-system uid (on vfat, the mount's owner), as `inferred`."""
    event.user.id = str(uid)
    event.user.name = user_name(uid)
    event.exfilguard.attribution = INFERRED


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
    the same start time and command name (a new process, or an exec, reads afresh).

    That check is itself a /proc read, the dearest step of an event: a pid checked less than
    `recheck_seconds` ago is taken as checked, unless an exec of it was noted since (the exec
    event is queued before any event of the new program). A pid reused meanwhile would need
    the whole pid space to wrap within that time.
    """

    def __init__(self, size: int = 4096, recheck_seconds: float = 0.05) -> None:
        self._size = size
        self._recheck = recheck_seconds
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[bytes, ProcessInfo]] = {}
        self._checked: dict[int, float] = {}  # pid -> when its cached identity was last confirmed
        self._execs: dict[int, ProcessInfo] = {}  # pid -> program it last executed (FAN_OPEN_EXEC)
        # pid -> the parent it had when its parent was read: a child that forks without an exec
        # (rsync's receiver, a worker of a Python pool) has no exec event to name it by
        self._forked: dict[int, int] = {}
        # the kernel's word on who forked a pid (forks.ForkWatch.parent_of), when it is heard
        self.forks: Callable[[int], tuple[int, int]] | None = None

    def note_exec(self, pid: int, executable: str) -> None:
        """The kernel saw `pid` execute `executable`: kept, with its uids read right now, for
        when the process has exited before one of its file events is handled."""
        name = os.path.basename(executable)
        if name.startswith("ld-") and ".so" in name:
            return  # execve opens the dynamic loader right after the program: keep the program
        uid, ppid, loginuid = _status_ids(pid)
        with self._lock:
            # what the pid ran before this exec names it no more (tar's child that opened the
            # archive, then the shell that ran gzip); gone by now, it still tells who ran it:
            # an exec keeps the real uid, the login uid and the parent
            before = self._cache.pop(pid, None)
        if uid < 0 and before is not None:
            uid, ppid, loginuid = before[1].uid, before[1].ppid, before[1].loginuid
        info = ProcessInfo(pid, ppid=ppid, executable=executable, name=name[:15], uid=uid, loginuid=loginuid)
        with self._lock:
            self._checked.pop(pid, None)
            self._execs.pop(pid, None)
            self._execs[pid] = info
            if len(self._execs) > self._size:
                del self._execs[next(iter(self._execs))]

    def lookup(self, pid: int) -> ProcessInfo | None:
        """Identity of `pid`: live from /proc, else the last one seen, else what it executed,
        else (a forked child that never executed anything) its parent's, marked inherited."""
        info = self._with_exec(pid, self._lookup(pid))
        if info is not None:
            return info
        parent = self._forked.get(pid, 0)
        found = self._ancestor(parent) if parent else None
        if found is None and self.forks is not None:
            parent, found = self._forked_by(pid)
        if found is None:
            return None
        return dataclasses.replace(found, pid=pid, ppid=parent, pgid=0, inherited=True)

    def _ancestor(self, ancestor: int) -> ProcessInfo | None:
        """The identity of a parent read from /proc (the receiver's parent, the generator, was
        not read either: then its own parent's)."""
        for _generation in range(2):
            found = self._cache.get(ancestor)
            if found is not None:
                return found[1]
            ancestor = self._forked.get(ancestor, 0)
            if not ancestor:
                break
        return None

    def _forked_by(self, pid: int) -> tuple[int, ProcessInfo | None]:
        """(parent, the nearest known ancestor's identity) of a pid gone unseen, by the forks
        the kernel announced: an ancestor alive now, or seen alive, or known by its exec. An
        ancestor whose pid was forked again after the child's fork (reused) names nothing."""
        assert self.forks is not None
        parent, order = self.forks(pid)
        ancestor = parent
        for _generation in range(3):  # rsync: receiver <- generator <- the rsync executed
            if not ancestor:
                break
            ancestor_parent, ancestor_order = self.forks(ancestor)
            if ancestor_order > order:
                break  # the pid is another process's now
            found = self._with_exec(ancestor, self._lookup(ancestor))
            if found is not None:
                return parent, found
            ancestor, order = ancestor_parent, ancestor_order
        return parent, None

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
        moment = time.monotonic()
        # read without the lock (each dict read is atomic): a pid checked a moment ago is most
        # of a burst's events; at worst a pid dropped meanwhile is answered as it was 50 ms ago
        cached = self._cache.get(pid)
        if cached is not None and moment - self._checked.get(pid, -1e9) < self._recheck:
            return cached[1]
        key = _stat_key(pid)
        if cached is not None and (key is None or key == cached[0]):
            # confirmed, or gone (the reader is often behind a burst whose process has exited:
            # a failed open per event, 2,500 in a 2,000-file burst, for the same answer)
            with self._lock:
                self._checked[pid] = moment
            return cached[1]
        if key is None:
            return None
        info = read_proc(pid)
        if info is None:
            return cached[1] if cached is not None else None
        forked = _descendants(pid)
        with self._lock:
            if len(self._cache) >= self._size:
                # drop the oldest quarter: insertion order is age order
                for old in list(self._cache)[: self._size // 4]:
                    del self._cache[old]
                    self._checked.pop(old, None)
            self._cache[pid] = (key, info)
            self._checked[pid] = moment
            for child, parent in forked:
                self._forked.pop(child, None)
                self._forked[child] = parent
            while len(self._forked) > self._size:
                del self._forked[next(iter(self._forked))]
        return info


_MAX_FORKED = 8  # children (and their children) of a process remembered when it is read


def _descendants(pid: int) -> list[tuple[int, int]]:
    """(child, parent) of the live children and grandchildren of `pid` (rsync's sender forks the
    generator, which forks the receiver), at most _MAX_FORKED of each; one /proc read when it
    has none."""
    out: list[tuple[int, int]] = []
    level = [pid]
    for _generation in range(2):
        nxt: list[int] = []
        for parent in level:
            try:
                children = _read(f"/proc/{parent}/task/{parent}/children").split()[:_MAX_FORKED]
            except OSError:
                continue
            for raw in children:
                child = int(raw)
                out.append((child, parent))
                nxt.append(child)
        level = nxt[:_MAX_FORKED]
    return out


def _status_ids(pid: int) -> tuple[int, int, int]:
    """(uid, ppid, login uid) of a live pid; -1/0/-1 for what cannot be read."""
    try:
        status = _read(f"/proc/{pid}/status")
    except OSError:
        return -1, 0, -1
    try:
        at = status.find(b"\nPPid:")
        ppid = int(status[at + 6 :].split(None, 1)[0]) if at >= 0 else 0
        uid = _uid(status)
    except (ValueError, IndexError):
        return -1, 0, -1
    return uid, ppid, _loginuid(f"/proc/{pid}")


def _stat_key(pid: int) -> bytes | None:
    """(comm, start time) of a live pid as one bytes key; None when it is gone."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    close = stat.rfind(b")")
    fields = stat[close + 2 :].split()
    # field 22 (starttime) is index 19 after the ")"
    return stat[: close + 1] + b"|" + (fields[19] if len(fields) > 19 else b"")
