"""FileSensor: tagged paths through watchdog (inotify), and removable writes without fanotify.

Always reports create, delete and rename on tagged paths with their tags. Opens, reads
and modifications come from here only when fanotify is not in use (then attribution is
best effort); with fanotify they come from FanotifySensor, exactly attributed.

watchdog rebuilds its watches after an inotify queue overflow but tells nobody; the
emitter below reports it, and the sensor answers with an `agent.gap` and a rescan.
"""

# ruff: noqa: PTH112, PTH116, PTH119, PTH120

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD

from agent.sensors import Emit, procinfo
from agent.sensors.copies import CopyDetector
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.media import RemovableMedia, RemovableMount
from agent.sensors.staging import StagingDetector, Written, file_fields
from agent.sensors.tags import TagMap
from protos import exfilguard_pb2 as pb
from protos.events import new_event, now

log = logging.getLogger(__name__)

_STRUCTURE = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent, DirMovedEvent,
]
_ACCESS = [FileOpenedEvent, FileClosedEvent, FileClosedNoWriteEvent]
_REMOVABLE = [FileClosedEvent, FileMovedEvent, DirMovedEvent]


@dataclass
class _OverflowWatchGroup(InotifyWatchGroup):
    """watchdog's watch group, plus a call-out when the kernel queue overflowed."""

    on_overflow: Callable[[], None] | None = None

    def _add_callback(self, path: bytes) -> None:
        # `mkdir -p a/b`: the walk after a/ was created already watches a/b; its own IN_CREATE
        # then tried again and watchdog warned (an exception where warnings are errors).
        if path in self._active_callbacks_by_path:
            return
        super()._add_callback(path)

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        if self.on_overflow is not None:
            self.on_overflow()


class _OverflowEmitter(InotifyEmitter):
    """An InotifyEmitter whose watch group reports queue overflows."""

    def __init__(self, *args: Any, on_overflow: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_overflow = on_overflow

    def on_thread_start(self) -> None:
        self._inotify = _OverflowWatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            on_overflow=self._on_overflow,
        )


class _Observer(BaseObserver):
    """One inotify instance for all our watches, with overflow reporting."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        self._fd = InotifyFD()
        self._fd.start()
        super().__init__(_OverflowEmitter, timeout=1.0, inotify_fd=self._fd, on_overflow=on_overflow)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._fd.stop()
        self._fd.join()


class _Dispatch(FileSystemEventHandler):
    def __init__(self, handle: Callable[[FileSystemEvent], None]) -> None:
        self._handle = handle

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except Exception:  # one bad event must not stop the observer thread
            log.exception("file event handling failed")


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
    ) -> None:
        self.tags = tags
        self.index = index
        self.copies = copies
        self.staging = staging
        self.media = media
        self._emit = emit
        self._exact = exact  # fanotify reports accesses; we report structure only
        self._on_new_dir = on_new_dir
        self._on_rescan = on_rescan
        self._observer: _Observer | None = None
        self._tree_watches: dict[str, ObservedWatch] = {}
        self._mount_watches: dict[str, ObservedWatch] = {}
        self._lock = threading.Lock()
        self._overflow_at = 0.0
        self._rescan_wanted = threading.Event()
        self._stopping = threading.Event()
        self._rescanner: threading.Thread | None = None
        self._who = procinfo.OpenFileIndex()
        self.overflows = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Index the tagged trees, then watch them."""
        self.index.rebuild()
        self._observer = _Observer(self._overflowed)
        self._observer.start()
        self._watch_roots()
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

    def _watch_roots(self) -> None:
        assert self._observer is not None
        event_filter = _STRUCTURE if self._exact else _STRUCTURE + _ACCESS
        for root in self.tags.top_roots():
            with self._lock:
                if root in self._tree_watches:
                    continue
            watch_path = root if os.path.isdir(root) else os.path.dirname(root)
            watch = self._observer.schedule(_Dispatch(self._tagged_event), watch_path, recursive=True,
                                            event_filter=list(event_filter))
            with self._lock:
                self._tree_watches[root] = watch

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        observer = self._observer
        if observer is None:
            return
        with self._lock:
            if appeared and mount.point not in self._mount_watches:
                handler = _Dispatch(self._removable_event)
                self._mount_watches[mount.point] = observer.schedule(
                    handler, mount.point, recursive=True, event_filter=list(_REMOVABLE))
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
        self._rescan_wanted.set()

    def _rescan_loop(self) -> None:
        while not self._stopping.is_set():
            self._rescan_wanted.wait()
            if self._stopping.is_set():
                return
            self._rescan_wanted.clear()
            try:
                self.rescan()
            except Exception:
                log.exception("rescan after lost events failed")

    def rescan(self) -> None:
        """Re-read the tagged trees after lost events: index, inventory, new roots, marks."""
        self.index.rebuild()
        self._watch_roots()
        if self._on_rescan is not None:
            self._on_rescan()

    # --------------------------------------------------------------- events

    def _tagged_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            src_tags, dest_tags = self.tags.tags_for(src), self.tags.tags_for(dest)
            self.index.move(src, dest)
            if event.is_directory and dest_tags and self._on_new_dir is not None:
                self._mark_tree(dest)
            if src_tags or dest_tags:
                out = self._file_event("file.rename", src, src_tags or dest_tags, event.is_directory)
                out.file.target_path = dest
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
            self.index.update(src)
            if event.is_directory and self._on_new_dir is not None:
                self._mark_tree(src)
            self._emit(self._file_event("file.create", src, tags, event.is_directory))
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
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

    def _mark_tree(self, path: str) -> None:
        assert self._on_new_dir is not None
        for dirpath, _dirs, _files in os.walk(path):
            self._on_new_dir(dirpath)

    def _file_event(self, action: str, path: str, tags: list[str], is_dir: bool,
                    info: procinfo.ProcessInfo | None = None) -> pb.Event:
        if is_dir:
            fields = pb.File(path=path, name=os.path.basename(path), type="dir")
            out = new_event(action, tags=tags, file=fields)
        else:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            fields = file_fields(path, size) if size >= 0 else pb.File(path=path, type="file")
            out = new_event(action, tags=tags, file=fields)
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
