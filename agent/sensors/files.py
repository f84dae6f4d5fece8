"""FileSensor: tagged paths through watchdog (inotify), and removable writes without fanotify.

Always reports create, delete and rename on tagged paths with their tags. Opens, reads
and modifications come from here only when fanotify is not in use (then attribution is
best effort); with fanotify they come from FanotifySensor, exactly attributed.

watchdog rebuilds its watches after an inotify queue overflow but tells nobody; the
emitter in `inotify.py` reports it, and the sensor answers with an `agent.gap` and a rescan.

Tagged roots come and go: a path that does not exist at start (a database restored later,
a new user's `/home/*/projects/secret`, a share mounted later) is waited for through
PendingRoots (anchor watches), mount changes and a slow periodic re-check; when it appears
it is watched, marked (fanotify), indexed and counted, and when a watched root is deleted
or unmounted the sensor waits for it again. Each transition is logged.
"""

# ruff: noqa: PTH112, PTH116, PTH119, PTH120

from __future__ import annotations

import collections
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)
from watchdog.observers.api import ObservedWatch

from agent.sensors import Emit, procinfo
from agent.sensors.copies import CopyDetector
from agent.sensors.failures import FailedEvents
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.inotify import Dispatch, Observer
from agent.sensors.media import RemovableMedia, RemovableMount, unwatched
from agent.sensors.pending import PendingRoots
from agent.sensors.staging import StagingDetector, Written, file_fields
from agent.sensors.tags import TagMap
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, new_event, now

log = logging.getLogger(__name__)

_STRUCTURE = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent, DirMovedEvent,
]
_ACCESS = [FileOpenedEvent, FileClosedEvent, FileClosedNoWriteEvent]
_REMOVABLE = [FileClosedEvent, FileMovedEvent, DirMovedEvent]


@dataclass(frozen=True, slots=True)
class _TreeWatch:
    """A recursive watch on a tagged tree, and which directory (device, inode) it was put on."""

    watch: ObservedWatch
    identity: tuple[int, int]
    handler: Dispatch


class FileSensor:
    """Watches tagged trees (and, without fanotify, removable mounts) through inotify."""

    name = "files"

    def __init__(  # noqa: PLR0917
        self,
        tags: TagMap,
        index: FingerprintIndex,
        copies: CopyDetector,
        staging: StagingDetector,
        media: RemovableMedia,
        emit: Emit,
        *,
        exact: bool,
        on_new_dir: Callable[[str], None] | None = None,
        on_rescan: Callable[[], None] | None = None,
        on_new_root: Callable[[str], None] | None = None,
        on_new_file: Callable[[str], None] | None = None,
        recheck_seconds: float = 300.0,
    ) -> None:
        self.tags = tags
        self.index = index
        self.copies = copies
        self.staging = staging
        self.media = media
        self._emit = emit
        self.failed = FailedEvents(emit, "file")  # handling that raised: in an agent.gap
        self._exact = exact  # fanotify reports accesses; we report structure only
        self._on_new_dir = on_new_dir
        self._on_rescan = on_rescan
        self._on_new_root = on_new_root
        self._on_new_file = on_new_file or (lambda _path: None)  # its inode marked (links.py)
        self._recheck_seconds = recheck_seconds
        self._observer: Observer | None = None
        self._pending: PendingRoots | None = None
        self._tree_watches: dict[str, _TreeWatch] = {}  # watched directory -> its watch
        self._known: frozenset[str] = frozenset()  # tagged roots watched, marked and indexed
        self._mount_watches: dict[str, ObservedWatch] = {}
        self._lock = threading.Lock()
        self._overflow_at = 0.0
        self._full_rescan = False
        self._rescan_wanted = threading.Event()
        self._stopping = threading.Event()
        self._rescanner: threading.Thread | None = None
        self._who = procinfo.OpenFileIndex()
        self._created = RecentCreates()
        self.overflows = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Index the tagged trees, then watch them, and wait for the tagged paths still missing."""
        self.index.rebuild()
        self._known = frozenset(self.tags.roots())
        for pattern in self.tags.missing():
            log.warning("tagged path %s does not exist yet; it will be watched when it appears", pattern)
        self._observer = Observer(self._overflowed, self.recheck_soon, self._dir_made)
        self._observer.start()
        self._pending = PendingRoots(self._observer.inotify, self.recheck_soon)
        self._reconcile()
        if not self._exact:
            self.media.subscribe(self._mount_changed)
        self._rescanner = threading.Thread(target=self._rescan_loop, name="exfilguard-rescan", daemon=True)
        self._rescanner.start()

    def stop(self) -> None:
        """Remove every watch; idempotent."""
        self._stopping.set()
        self._rescan_wanted.set()
        if self._rescanner is not None:
            self._rescanner.join(timeout=10)
            self._rescanner = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None
        self.failed.flush()

    # ------------------------------------------------------- tagged roots

    def recheck_soon(self) -> None:
        """Something may have made or removed a tagged root (an anchor event, a mount change)."""
        self._rescan_wanted.set()

    def recheck(self) -> None:
        """Re-expand the tag map and watch, mark and index what appeared; forget what went."""
        self._reconcile()

    def _reconcile(self) -> None:
        observer, pending = self._observer, self._pending
        if observer is None or pending is None:
            return
        for _ in range(8):  # bounded: again only while new anchors were placed (mkdir -p racing us)
            dead = [path for path, tree in self._tree_watches.items()
                    if not observer.is_watching(tree.watch) or _identity(path) != tree.identity]
            for path in dead:  # before the tag map forgets them: their deletes keep their tags
                tree = self._tree_watches[path]
                observer.drain(tree.watch, tree.handler.drained)
            roots = self.tags.refresh()
            self._sync_watches(observer, _watch_paths(self.tags.top_roots()), roots, dead)
            self._sync_roots(roots)
            if not pending.update(self.tags.anchors()):
                return

    def _sync_watches(self, observer: Observer, wanted: list[str],
                      roots: dict[str, tuple[str, ...]], dead: list[str]) -> None:
        event_filter = _STRUCTURE if self._exact else _STRUCTURE + _ACCESS
        # a watch that died (its directory deleted, unmounted or replaced): its roots come back
        # as new ones, to be marked and indexed again
        for path in dead:
            self._unschedule(observer, path)
            lost = sorted(r for r in self._known if _inside(r, path))
            self._known = self._known.difference(lost)
            for root in lost:
                self.index.remove(root)
                if root not in roots:
                    log.warning("tagged path %s is gone; it will be watched again when it appears", root)
        for path in wanted:
            if path in self._tree_watches:
                continue
            identity = _identity(path)
            if identity is None:
                continue
            handler = Dispatch(self._tagged_event, self.failed)
            try:
                watch = observer.schedule(handler, path, recursive=True, event_filter=list(event_filter))
            except OSError:
                log.debug("cannot watch %s yet", path, exc_info=True)
                continue  # gone again or unreadable: its anchor wakes us
            with self._lock:
                self._tree_watches[path] = _TreeWatch(watch, identity, handler)
        for path in [p for p in self._tree_watches if p not in wanted]:
            self._unschedule(observer, path)  # inside a root that appeared around it

    def _unschedule(self, observer: Observer, path: str) -> None:
        with self._lock:
            tree = self._tree_watches.pop(path)
        with contextlib.suppress(KeyError):
            observer.unschedule(tree.watch)

    def _sync_roots(self, roots: dict[str, tuple[str, ...]]) -> None:
        for root in sorted(self._known - set(roots)):
            self.index.remove(root)
            log.warning("tagged path %s is gone; it will be watched again when it appears", root)
        for root in sorted(set(roots) - self._known):
            if self._on_new_root is not None:
                self._on_new_root(root)  # marks first: an open after the walk below is seen
            files = self.index.add_tree(root)
            log.info("tagged path %s appeared: watching %d files", root, files)
        self._known = frozenset(roots)

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        observer = self._observer
        if observer is None:
            return
        with self._lock:
            if appeared and mount.point not in self._mount_watches:
                handler = Dispatch(self._removable_event, self.failed)
                try:
                    self._mount_watches[mount.point] = observer.schedule(
                        handler, mount.point, recursive=True, event_filter=list(_REMOVABLE))
                except OSError as exc:  # a FUSE mount of another user without allow_other
                    why = f"inotify: {exc.strerror}"
                    log.warning("%s (%s) cannot be watched: %s", mount.point, mount.mount.source, why)
                    self._emit(unwatched(mount, why))
                    return
                if mount.seen_at:  # writes between the mount and its watch: found by a scan
                    threading.Thread(target=self.copies.catch_up, args=(mount, time.time()), daemon=True,
                                     name="exfilguard-catch-up").start()
            elif not appeared and mount.point in self._mount_watches:
                observer.unschedule(self._mount_watches.pop(mount.point))

    # ------------------------------------------------------------- overflow

    def _overflowed(self) -> None:
        self.overflows += 1
        moment = time.monotonic()
        with self._lock:
            # one overflow reaches every watch group: report it once
            fresh = moment - self._overflow_at > 1.0
            self._overflow_at = moment
        if fresh:
            event = new_event("agent.gap")
            event.exfilguard.gap.reason = "queue_overflow"
            event.exfilguard.gap.first.CopyFrom(now())
            event.exfilguard.gap.last.CopyFrom(now())
            event.event.reason = "inotify queue overflowed: file events were lost; tagged trees rescanned"
            event.exfilguard.attribution = procinfo.NONE
            self._emit(event)
        self._full_rescan = True
        self._rescan_wanted.set()

    def _rescan_loop(self) -> None:
        # Wakes on lost events (a full rescan), on anchor and mount changes (a re-check of the
        # tagged roots), and every `recheck_seconds` as a safety net (a stat per tagged path).
        while not self._stopping.is_set():
            self._rescan_wanted.wait(self._recheck_seconds)
            if self._stopping.is_set():
                return
            self._rescan_wanted.clear()
            full, self._full_rescan = self._full_rescan, False
            try:
                if full:
                    self.rescan()
                else:
                    self.recheck()
            except Exception:
                log.exception("re-reading the tagged trees failed")

    def rescan(self) -> None:
        """Re-read the tagged trees after lost events: index, inventory, new roots, marks."""
        self.index.rebuild()
        self._reconcile()
        if self._on_rescan is not None:
            self._on_rescan()

    # --------------------------------------------------------------- events

    def _tagged_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        if event.is_directory and (src in self._known or dest in self._known) \
                and isinstance(event, (DirDeletedEvent, DirMovedEvent)):
            self.recheck_soon()  # a tagged root itself went (or was renamed)
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            self._created.forget(src)
            src_tags, dest_tags = self.tags.tags_for(src), self.tags.tags_for(dest)
            if event.is_directory and dest_tags and self._on_new_dir is not None:
                self._mark_tree(dest)  # marks first, then the index (as for a new directory)
            self.index.move(src, dest)
            if dest_tags and not event.is_directory:
                self._on_new_file(dest)  # moved in (a rename inside keeps its inode's mark)
            if src_tags or dest_tags:
                out = self._file_event("file.rename", src, src_tags or dest_tags, event.is_directory)
                out.file.target_path = fs_text(dest)
                self._emit(out)
            if not event.is_directory and self.media.mount_for(dest) is not None:
                self._removable_event(event)
            return
        tags = self.tags.tags_for(src)
        if not tags:
            return
        if isinstance(event, FileOpenedEvent) and self.index.read_by_us(src, "open"):
            return  # the agent hashing a tagged file to compare it with a copy
        if isinstance(event, FileClosedNoWriteEvent) and self.index.read_by_us(src, "close"):
            return
        if isinstance(event, (FileCreatedEvent, DirCreatedEvent)):
            found = _lstat(src)  # one look serves the repeat test and the event's size
            if not self._created.first_as(src, found):
                return  # watchdog's walk of a new directory found what was reported already
            if event.is_directory and self._on_new_dir is not None:
                self._mark_tree(src)  # marks first: a file written after the walk below is seen
            elif not event.is_directory:
                self._on_new_file(src)
            # maybe still being written, and its close-after-write may never reach us (written
            # before the mark, or by the agent itself): the index looks at it again for a while
            self.index.update(src, written=False, looked=found)
            size = found.st_size if found is not None and stat.S_ISREG(found.st_mode) else None
            self._emit(self._file_event("file.create", src, tags, event.is_directory, size=size))
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self._created.forget(src)
            self.index.remove(src)
            self._emit(self._file_event("file.delete", src, tags, event.is_directory))
        elif isinstance(event, FileOpenedEvent):
            info = self._who.who_has(src)
            out = self._file_event("file.open", src, tags, False, info)
            self._emit(out)
            if info is not None:
                self.copies.note_read(info.pid, info, src, tags)
                self.staging.note_read(info.pid, info, src, tags)
        elif isinstance(event, FileClosedNoWriteEvent):
            self._emit(self._file_event("file.read", src, tags, False, None))
        elif isinstance(event, FileClosedEvent):
            self.index.update(src)
            self._emit(self._file_event("file.modify", src, tags, False, None))

    def _dir_made(self, path: str) -> None:
        # the inotify reader has just read it, and handles the events before it first: marked now
        if self._on_new_dir is not None and self.tags.tags_for(path):
            self._on_new_dir(path)

    def _mark_tree(self, path: str) -> None:
        assert self._on_new_dir is not None
        for dirpath, _dirs, _files in os.walk(path):
            self._on_new_dir(dirpath)

    def _file_event(self, action: str, path: str, tags: list[str], is_dir: bool,
                    info: procinfo.ProcessInfo | None = None, *, size: int | None = None) -> pb.Event:
        if is_dir:
            fields = pb.File(path=fs_text(path), name=fs_text(os.path.basename(path)), type="dir")
            out = new_event(action, tags=tags, file=fields)
        else:
            try:
                size = os.stat(path).st_size if size is None else size
            except OSError:
                size = -1
            fields = file_fields(path, size) if size >= 0 else pb.File(path=fs_text(path), type="file")
            return procinfo.attributed_event(action, tags, info, procinfo.INFERRED if info is not None
                                             else procinfo.NONE, file=fields)
        procinfo.describe(out, info, procinfo.INFERRED if info is not None else procinfo.NONE)
        return out

    def _removable_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        path = os.fsdecode(event.dest_path if isinstance(event, FileMovedEvent) else event.src_path)
        if not isinstance(event, (FileClosedEvent, FileMovedEvent)):
            return
        info = self._who.who_has(path)
        try:
            size = os.stat(path).st_size
        except OSError:
            return  # renamed already (rsync's temp file): the rename reports the final name
        self.copies.note_write(Written(path=path, size=size, pid=info.pid if info else 0, info=info,
                                       attribution=procinfo.INFERRED if info else procinfo.NONE))


class RecentCreates:
    """Paths reported created, with the file they were: one file.create per path and file.

    watchdog walks each directory it starts watching and reports what it finds there as
    created (so nothing made before the watch is missed); `mkdir -p a/b/c/...` therefore
    reports the deeper directories once for every level above them. A create for a path
    already reported with the same device, inode and type is that repeat (a delete or move
    in between makes it news again). Bounded, oldest first out.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._seen: collections.OrderedDict[str, tuple[int, int, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def first(self, path: str) -> bool:
        """True unless `path` was already reported created as the file it is now."""
        return self.first_as(path, _lstat(path))

    def first_as(self, path: str, st: os.stat_result | None) -> bool:
        """`first`, with the lstat of `path` the caller made (None: it is gone)."""
        if st is None:
            return True  # gone already: report it, there is nothing to tell a repeat by
        identity = (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode))
        with self._lock:
            if self._seen.get(path) == identity:
                return False
            self._seen[path] = identity
            self._seen.move_to_end(path)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)
        return True

    def forget(self, path: str) -> None:
        """`path` was deleted or moved away: a create there is news again."""
        with self._lock:
            self._seen.pop(path, None)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _watch_paths(tops: list[str]) -> list[str]:
    """Directories to watch recursively for these top roots (a tagged file: its directory),
    none inside another, so no event is reported twice."""
    out: list[str] = []
    for path in sorted({root if os.path.isdir(root) else os.path.dirname(root) for root in tops}):
        if not any(_inside(path, top) for top in out):
            out.append(path)
    return out
