"""FanotifySensor: exact process attribution from the kernel's fanotify interface (root only).

A ctypes binding in fd mode (no FID reporting): each event carries the pid and an open
fd on the file, whose path we read from /proc/self/fd. Marks:
  - inode marks on every directory of the tagged trees (FAN_EVENT_ON_CHILD): opens,
    reads (close without write) and modifications of tagged files;
  - filesystem marks on removable mounts' file systems: every close-after-write is a
    `file.write`, whichever mount namespace the writer used;
  - filesystem marks with FAN_CLOSE_WRITE and FAN_OPEN_EXEC on the local file systems (the
    root, /tmp, /dev/shm, /home, ...), so a process carrying tagged data is seen writing a
    derived file anywhere, and every exec is seen (who a short-lived pid was, and its pipes);
  - inode marks on derived files (written from tagged data outside the tagged trees), whose
    reads carry their sources on (lineage.py), and on every tagged file (links.py): an open
    through another name (a hard link, a bind mount) is looked up by its inode.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH113, PTH115, PTH119

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as errno_mod
import heapq
import itertools
import logging
import os
import queue
import resource
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.background import Background
from agent.sensors import procinfo
from agent.sensors.errors import FanotifyUnavailable
from agent.sensors.fdname import DELETED, live_name
from agent.sensors.finished import open_for_writing, temporary_name
from agent.sensors.pacing import ReadPacing
from agent.sensors.stoppipe import StopPipe

log = logging.getLogger(__name__)

FAN_MODIFY = 0x02
FAN_CLOSE_WRITE = 0x08
FAN_CLOSE_NOWRITE = 0x10
FAN_OPEN = 0x20
FAN_OPEN_EXEC = 0x1000
FAN_Q_OVERFLOW = 0x4000
FAN_EVENT_ON_CHILD = 0x08000000

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
TOO_DEEP = "..."  # stands for the directories of a path longer than PATH_MAX
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20

FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_DONT_FOLLOW = 0x4
FAN_MARK_ONLYDIR = 0x8
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100

AT_FDCWD = -100
FAN_NOFD = -1
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_METADATA_VERSION = 3
_READ_SIZE = 64 * 1024
_MARK_KINDS = {"inode": FAN_MARK_DONT_FOLLOW, "mount": FAN_MARK_MOUNT, "filesystem": FAN_MARK_FILESYSTEM}

TAGGED_MASK = FAN_OPEN | FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE | FAN_EVENT_ON_CHILD
# the open to read /proc while the writer lives; each modify names a process writing into the
# file, which need not be the one that closes it ({ cat f; echo; } > stick/x: the shell closes)
MOUNT_MASK = FAN_OPEN | FAN_MODIFY | FAN_CLOSE_WRITE
# whole file systems: writes (archives of tagged files) and execs (who a short-lived pid was)
SYSTEM_MASK = FAN_CLOSE_WRITE | FAN_OPEN_EXEC
_READ = FAN_OPEN | FAN_CLOSE_NOWRITE
READER_NICE = -10  # the reader reads /proc while a writer lives: ahead of a busy machine's work


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [
        ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p,
    ]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


class Fanotify:
    """One fanotify notification group (FAN_CLASS_NOTIF, fd mode, non-blocking)."""

    def __init__(self) -> None:
        self._libc = _libc()
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS
        fd = self._libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NOATIME)
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno_mod.EPERM:
                # O_NOATIME needs ownership or CAP_FOWNER; retry plainly before giving up.
                fd = self._libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
            if fd < 0:
                raise FanotifyUnavailable("fanotify_init", ctypes.get_errno())
        self.fd = fd
        self.more = False  # the last read filled the buffer: the kernel may hold more at once

    def mark(self, path: str, mask: int, *, kind: str = "inode", remove: bool = False, at: int = -1) -> None:
        """Add (or remove) a mark on an inode, a mount or a whole file system; with `at` (an open
        descriptor), on what that descriptor holds (`path` only names it in errors)."""
        flags = FAN_MARK_REMOVE if remove else FAN_MARK_ADD
        flags |= _MARK_KINDS[kind]
        where = (at, None) if at >= 0 else (AT_FDCWD, os.fsencode(path))
        if self._libc.fanotify_mark(self.fd, flags, mask, *where) < 0:
            raise FanotifyUnavailable("fanotify_mark", ctypes.get_errno(), path)

    def read(self) -> list[tuple[int, int, int]]:
        """Pending events as (mask, fd, pid); the caller closes each fd. Empty when none."""
        try:
            buf = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            self.more = False
            return []
        self.more = len(buf) > _READ_SIZE // 2
        return events(buf)

    def close(self) -> None:
        """Release the group and all its marks."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def events(buf: bytes) -> list[tuple[int, int, int]]:
    """The events in what one read of a group returned, as (mask, fd, pid)."""
    out: list[tuple[int, int, int]] = []
    offset = 0
    while offset + _METADATA.size <= len(buf):
        event_len, vers, _res, _mlen, mask, fd, pid = _METADATA.unpack_from(buf, offset)
        if vers != _METADATA_VERSION or event_len < _METADATA.size:
            break  # not a layout we understand; the rest of the buffer is unusable
        out.append((mask, fd, pid))
        offset += event_len
    return out


def available() -> bool:
    """Whether this process may use fanotify here (root and a kernel that allows it)."""
    try:
        probe = Fanotify()
    except FanotifyUnavailable:
        return False
    probe.close()
    return True


@dataclass(slots=True)
class Access:
    """One fanotify event, resolved: what happened, to which path, by whom."""

    mask: int
    path: str
    fd: int
    pid: int
    process: procinfo.ProcessInfo | None
    first_path: str = ""  # the path when the event was read (a later rename changes `path`)
    tags: tuple[str, ...] = ()  # of a tagged file, as the reader found them (a derived file: none)
    via: str = ""  # the name a tagged file was opened by, when not its tagged path (`path`): a hard link


AccessHandler = Callable[[Access], None]


class FanotifySensor:
    """Reads fanotify events and hands resolved accesses to the file sensors.

    Two threads: the reader drains the kernel queue, resolves each event at once (path
    from the fd, process from /proc while it still lives) and reports tagged accesses; a
    worker checks removable writes (hashing is slow) a moment later.
    `tagged_as(path)` says whether a path is tagged (its tags) or derived from tagged data (no
    tags), None when neither: one look per event, which `on_tagged` finds in `Access.tags`.
    `tagged_inode(fd)` names the tagged file (path, tags) an open or read under another path
    is (a hard link, a bind mount), by its inode: `Access.path` is then that file, `via` the name.
    `on_tagged` gets events under tagged marks;
    `on_removable` close-after-write on removable mounts, handled once the reader has drained
    the kernel queue (every read that came before the close is known by then), or
    `defer_seconds` later when the file may still change (finished.py: a temporary name, as
    rsync's, is seen under its final name; a file another writer holds, once that one is
    done); `on_other_write`
    close-after-write elsewhere, only for pids `wants_pid` accepts (`on_other_now` at once, in
    the reader thread, `on_other_write` deferred under the final name). `on_exec(pid)` hears of
    every exec, and `on_write(pid, fd, modified)` of every write (modify or close-after-write)
    on removable media, at once in the reader thread while the process may still be read.
    """

    name = "fanotify"

    def __init__(
        self,
        *,
        tagged_as: Callable[[str], tuple[str, ...] | None],
        is_removable: Callable[[str], bool],
        on_tagged: AccessHandler,
        on_removable: AccessHandler,
        on_other_write: AccessHandler | None = None,
        wants_pid: Callable[[int], bool] | None = None,
        on_overflow: Callable[[], None] | None = None,
        on_exec: Callable[[int], None] | None = None,
        on_write: Callable[[int, int, bool], None] | None = None,
        on_other_now: AccessHandler | None = None,
        on_failure: Callable[[], None] | None = None,
        tagged_inode: Callable[[int], tuple[str, tuple[str, ...]] | None] | None = None,
        defer_seconds: float = 0.3,
        max_pending: int = 2048,
    ) -> None:
        self._group = Fanotify()
        self._tagged_as = tagged_as
        self._is_removable = is_removable
        self._handlers: dict[str, AccessHandler] = {"tagged": on_tagged, "removable": on_removable}
        if on_other_write is not None:
            self._handlers["other"] = on_other_write
        self._wants_pid = wants_pid or (lambda _pid: False)
        self._on_overflow = on_overflow
        self._on_exec = on_exec or (lambda _pid: None)
        self._on_write = on_write or (lambda _pid, _fd, _closed: None)
        self._on_other_now = on_other_now
        self._on_failure = on_failure or (lambda: None)  # an event lost to an error: counted in a gap
        self._tagged_inode = tagged_inode or (lambda _fd: None)
        self._defer = defer_seconds
        # Bounded: each item holds an fd; when the worker lags, the reader waits and the
        # kernel queue (unlimited for root) holds the rest.
        self._work: queue.Queue[tuple[float, str, Access] | None] = queue.Queue(max_pending)
        self._settling: list[Access] = []  # removable writes read in this drain (reader only)
        self.processes = procinfo.ProcessCache()
        self._me = os.getpid()
        self._stop = StopPipe()
        self._reader = Background("fanotify", self._read_loop, nice=READER_NICE)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._marked: set[tuple[str, str]] = set()
        # st_dev of each marked removable file system -> its mount point here, to place writes
        # made through another namespace's mount (their paths read as relative to the stick)
        self._removable_devs: dict[int, str] = {}
        # mount point -> (kind, st_dev) of the mark placed for removable media there
        self._media_marks: dict[str, tuple[str, int]] = {}
        self._system_devs: set[int] = set()  # file systems marked whole for derived files and execs
        self.events_read = 0
        self.pacing = ReadPacing()  # a flood's events are let merge in the kernel's queue (pacing.py)
        self.woke_at = 0.0  # monotonic time the reader last woke for events (background work waits)
        _raise_fd_limit()

    # ----------------------------------------------------------------- marks

    def mark_tree(self, root: str) -> int:
        """Mark a tagged directory and every directory below it; returns marks placed."""
        added = 0
        if os.path.isfile(root):
            return int(self._mark(root, TAGGED_MASK & ~FAN_EVENT_ON_CHILD, "inode"))
        for dirpath, _dirs, _files in os.walk(root):
            added += self._mark(dirpath, TAGGED_MASK, "inode")
        return added

    def mark_dir(self, path: str) -> None:
        """Mark one new tagged directory (the inotify sensor saw it appear)."""
        self._mark(path, TAGGED_MASK, "inode")

    def mark_mount(self, point: str, add: bool = True) -> str:
        """Watch (or stop watching) writes on a removable mount; "" when watched (or gone
        already), else why not.

        The mark is on the stick's file system, not on this mount: under the agent's hardened
        unit (ProtectSystem/ProtectHome) the agent runs in a mount namespace of its own, and a
        mount mark there does not see writes made through the user's mount of the same stick.
        A file system the kernel will not mark whole (some FUSE and network ones) gets a mount
        mark, which sees the writes made through this mount.

        The mark goes on the directory opened here, never on a path looked up again: a stick
        unmounted before its mount was handled leaves the directory under it, on a system file
        system, and a removable mark placed or taken off there changed that file system's own
        mark (close-after-write taken off: nothing derived in /tmp or /home from then on)."""
        if not add:
            with self._lock:
                self._unmark_mount(point)
            return ""
        try:
            held = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            held = -1  # gone, or a FUSE mount root may not look into: the marks below say why
        try:
            with self._lock:
                return self._mark_media(point, held)
        finally:
            if held >= 0:
                os.close(held)

    def _mark_media(self, point: str, held: int) -> str:
        """mark_mount's marks, on the directory open as `held` (-1: by path)."""
        dev = os.fstat(held).st_dev if held >= 0 else -1
        if dev in self._system_devs:
            log.info("%s is no longer mounted: nothing to watch there", point)
            return ""
        if dev >= 0 and self._media_marks.get(point, ("", -1))[1] == dev:
            return ""  # marked already
        if dev >= 0 and os.path.ismount(point):  # not a GVfs directory: its siblings share the device
            self._removable_devs[dev] = point.rstrip("/") or "/"
        try:
            self._group.mark(point, MOUNT_MASK, kind="filesystem", at=held)
            self._media_marks[point] = ("filesystem", dev)
            return ""
        except FanotifyUnavailable as exc:
            whole = exc
        try:
            self._group.mark(point, MOUNT_MASK, kind="mount", at=held)
        except FanotifyUnavailable as exc:
            return f"fanotify refused a file-system mark ({os.strerror(whole.errno)}) and a mount mark " \
                   f"({os.strerror(exc.errno)})"
        self._media_marks[point] = ("mount", dev)
        log.warning("%s: fanotify refused a file-system mark (%s); a mount mark sees the writes made "
                    "through this mount only", point, os.strerror(whole.errno))
        return ""

    def _unmark_mount(self, point: str) -> None:
        """Take the removable mark off the file system still mounted at `point`; once unmounted
        (the usual case) the kernel dropped it, and the path names another file system's dir."""
        devs = {d for d, p in self._removable_devs.items() if p == point.rstrip("/")}
        self._removable_devs = {d: p for d, p in self._removable_devs.items() if d not in devs}
        marked = self._media_marks.pop(point, None)
        if marked is None:
            return
        kind, dev = marked
        try:
            held = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if os.fstat(held).st_dev == dev and dev not in self._system_devs:
                with contextlib.suppress(FanotifyUnavailable):
                    self._group.mark(point, MOUNT_MASK, kind=kind, remove=True, at=held)
        finally:
            os.close(held)

    def mark_file(self, path: str) -> None:
        """Watch opens and reads of one file (a derived file outside the tagged trees)."""
        self._mark(path, TAGGED_MASK & ~FAN_EVENT_ON_CHILD, "inode")

    def mark_filesystem(self, path: str, *, again: bool = False) -> None:
        """Watch writes and execs on the file system holding `path` (`again`: if marked already)."""
        if (self._add_mark if again else self._mark)(path, SYSTEM_MASK, "filesystem"):
            with contextlib.suppress(OSError):
                self._system_devs.add(Path(path).stat().st_dev)

    def _mark(self, path: str, mask: int, kind: str) -> bool:
        if kind == "inode":
            # Not remembered: an inode mark goes with its inode, and a directory deleted and made
            # again under the same path (a tagged root restored) needs a new one. Adding a mark
            # twice only ORs the mask, so a repeat is harmless.
            return self._add_mark(path, mask, kind)
        key = (kind, path)
        with self._lock:
            if key in self._marked or not self._add_mark(path, mask, kind):
                return False
            self._marked.add(key)
            return True

    def _add_mark(self, path: str, mask: int, kind: str) -> bool:
        """Mark `path`; False when it was removed meanwhile."""
        try:
            self._group.mark(path, mask, kind=kind)
        except FanotifyUnavailable as exc:
            if exc.errno in (errno_mod.ENOENT, errno_mod.ENOTDIR):
                return False  # removed meanwhile
            raise
        return True

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run the reader and worker threads."""
        self._worker = threading.Thread(target=self._work_loop, name="exfilguard-fanotify-work", daemon=True)
        self._worker.start()
        self._reader.start()

    def stop(self) -> None:
        """Stop reading, finish queued work, close the group; idempotent."""
        self._stop.wake(self._reader)
        if self._worker is not None:
            self._work.put(None)
            self._worker.join(timeout=30)
            self._worker = None
        if self._group.fd >= 0:
            self._group.close()
            self._stop.close()

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._group.fd, select.POLLIN)
        self._stop.register(poller)
        resting = select.poll()  # a flood's pause waits on the stop pipe alone
        self._stop.register(resting)
        while True:
            ready = poller.poll()
            stopping = self._stop.rang(ready)
            # read at once (a flood aside: pacing.py): a short-lived process (cp, tar's gzip) must
            # still be in /proc when its events are handled, or its attribution falls to `inferred`
            self.woke_at = time.monotonic()
            self.pacing.woke(self.woke_at)
            try:
                self._drain()  # on stop too: what the kernel queued before stop() is reported
            except Exception:  # a sensor thread must not die on one bad event
                log.exception("fanotify event handling failed")
                self._on_failure()
            if stopping:
                return
            if rest := self.pacing.rest():  # in a flood of tagged files' events only (pacing.py)
                resting.poll(rest * 1000)  # stop() ends it: the next poll sees the pipe
            self.pacing.idle(time.monotonic())

    def _drain(self) -> None:
        try:
            self._drain_queue()
        finally:
            self._release()

    def _release(self) -> None:
        """The kernel queue is drained: removable writes read in it go to the worker, now, or
        `defer_seconds` from now when the file may still change."""
        now = time.monotonic()
        for access in self._settling:
            later = temporary_name(os.path.basename(access.path)) or open_for_writing(access.fd)
            self._work.put((now + self._defer if later else now, "removable", access))
        self._settling.clear()

    def _drain_queue(self) -> None:
        while True:
            batch = self._group.read()
            if not batch:
                return
            # a short read emptied the queue: no second read to hear it is empty (poll wakes us
            # for what comes next); a full one may have left more behind
            more = self._group.more
            for mask, fd, pid in batch:
                self.events_read += 1
                if mask & FAN_Q_OVERFLOW:
                    if self._on_overflow is not None:
                        self._on_overflow()
                    continue
                if fd == FAN_NOFD:
                    continue
                try:
                    self._resolve(mask, fd, pid)
                except Exception:  # its descriptor is still open: only returns close it first
                    os.close(fd)
                    # the rest of this read's events (and their descriptors) are not lost with it
                    log.exception("fanotify event handling failed")
                    self._on_failure()
            if not more:
                return

    def _resolve(self, mask: int, fd: int, pid: int) -> None:
        if pid == self._me:
            os.close(fd)
            return
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as exc:
            path = self._too_deep(fd) if exc.errno == errno_mod.ENAMETOOLONG else ""
            if not path:
                os.close(fd)
                return
        if path.endswith(DELETED):
            path = live_name(fd, path)
        if mask & FAN_OPEN_EXEC:
            self.pacing.urgent()  # who a short-lived pid was: read while it lives, never paced
            self.processes.note_exec(pid, path)
            if not os.path.basename(path).startswith("ld-"):  # the loader: the same exec again
                self._on_exec(pid)
            if not mask & (FAN_OPEN | FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE):
                os.close(fd)
                return
        kind = ""
        due, via = 0.0, ""
        tags = self._tagged_as(path)
        if tags is not None:
            kind = "tagged"
        elif self._is_removable(path := self._placed(fd, path)):
            self.pacing.urgent()
            if mask & (FAN_MODIFY | FAN_CLOSE_WRITE):
                self._on_write(pid, fd, bool(mask & FAN_MODIFY))
            if mask & FAN_CLOSE_WRITE:
                kind = "removable"
            else:
                # An open or a write on removable media: learn who it is while it lives.
                self.processes.lookup(pid)
        elif mask & _READ and (linked := self._tagged_inode(fd)) is not None:
            # a tagged file opened by another name: besides the removable mounts and the derived
            # files, only the marks on tagged files and their directories report opens and reads
            kind, via, (path, tags) = "tagged", path, linked
        elif mask & FAN_CLOSE_WRITE and "other" in self._handlers and self._wants_pid(pid):
            kind, due = "other", time.monotonic() + self._defer  # zip renames its temp file too
            self.pacing.urgent()
        if not kind:
            os.close(fd)
            return
        access = Access(mask, path, fd, pid, self.processes.lookup(pid), path, tags or (), via)
        if kind == "other" and self._on_other_now is not None:
            try:
                self._on_other_now(access)  # before any later read of the file is handled
            except Exception:
                log.exception("fanotify other write handling failed: %s", path)
                self._on_failure()
        if kind == "removable":
            self._settling.append(access)  # once the queue is drained; hashing is slow
        elif kind == "other":
            self._work.put((due, kind, access))  # later, under the final name
        else:
            self._handle(kind, access)  # cheap: no hand-over between threads per event

    def _too_deep(self, fd: int) -> str:
        """A name for a file on a stick whose path is longer than PATH_MAX (the kernel will not
        spell it; directories made one `cd` at a time): `POINT/.../#INODE`. Its content is read
        through the descriptor as any other write's, so a copy is still identified; "" when
        the file is not on removable media."""
        try:
            st = os.fstat(fd)
        except OSError:
            return ""
        point = self._removable_devs.get(st.st_dev)
        return f"{point.rstrip('/')}/{TOO_DEEP}/#{st.st_ino}" if point is not None else ""

    def _placed(self, fd: int, path: str) -> str:
        """`path` as seen here: a file on a marked stick written through a mount in another
        mount namespace reads as relative to the stick's root; put it under our mount point."""
        if not self._removable_devs:
            return path
        try:
            point = self._removable_devs.get(os.fstat(fd).st_dev)
        except OSError:
            return path
        if point is None or path == point or path.startswith(point + "/"):
            return path
        return point + path if path != "/" else point

    def _work_loop(self) -> None:
        # Each write waits until its `due` time (now, for a finished removable write): reads
        # that fanotify queued after a merged open+close of the written file are handled (by
        # the reader) first, and a temp-then-rename writer has renamed. Due times do not
        # follow arrival order (a deferred write, then one due at once): a heap, by due time
        # and then arrival.
        deferred: list[tuple[float, int, str, Access]] = []
        arrived = itertools.count()
        stopping = False
        while not stopping or deferred:
            if not stopping:
                timeout = max(0.0, deferred[0][0] - time.monotonic()) if deferred else None
                try:
                    item = self._work.get(timeout=timeout)
                except queue.Empty:
                    pass  # the earliest deferred write is due
                else:
                    if item is None:
                        stopping = True  # finish what is deferred at once, then leave
                    else:
                        heapq.heappush(deferred, (item[0], next(arrived), item[1], item[2]))
            now = time.monotonic()
            while deferred and (stopping or deferred[0][0] <= now):
                _due, _order, kind, access = heapq.heappop(deferred)
                self._handle(kind, access)

    def _handle(self, kind: str, access: Access) -> None:
        try:
            if kind in {"removable", "other"}:
                with contextlib.suppress(OSError):
                    current = os.readlink(f"/proc/self/fd/{access.fd}")
                    if current.endswith(DELETED):
                        current = live_name(access.fd, current)
                    access.path = self._placed(access.fd, current)
            self._handlers[kind](access)
        except Exception:
            log.exception("fanotify %s access handling failed: %s", kind, access.path)
            self._on_failure()
        finally:
            os.close(access.fd)


def _raise_fd_limit() -> None:
    """Queued events hold fds: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
