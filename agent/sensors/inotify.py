"""watchdog's inotify observer as the file sensor needs it.

One inotify instance for every watch (tagged trees, removable mounts, and the PendingRoots
anchors, which join it without threads of their own). watchdog rebuilds its watches after a
queue overflow and stops an emitter whose directory was deleted, telling nobody; here both
are reported (`on_overflow`, `on_lost`), and `Observer.drain` lets the sensor unschedule a
dead watch without losing the events it already read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watchdog.events import DirModifiedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD, WatchDescriptor

log = logging.getLogger(__name__)

BARRIER = "\0drained"  # no path holds a NUL: a marker queued behind a watch's events


@dataclass
class WatchGroup(InotifyWatchGroup):
    """watchdog's watch group, plus call-outs when the kernel queue overflowed or the watch ended."""

    on_overflow: Callable[[], None] | None = None
    on_lost: Callable[[], None] | None = None
    root_deleted: bool = False  # the watched directory itself was deleted (not unmounted, not moved)

    def on_event(self, event: InotifyEvent) -> None:
        if event.is_delete_self and self._active_callbacks_by_watch.get(event.wd) == self.path:
            self.root_deleted = True  # before the emitter reads it, and stops itself on it
        super().on_event(event)

    def watching_root(self) -> bool:
        """Whether the watched directory itself is still watched (not deleted, not unmounted)."""
        return self.is_active and self.path in self._active_callbacks_by_path

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        lost = self._active_callbacks_by_watch.get(wd) == self.path
        super().on_watch_deleted(wd)
        if lost and self.on_lost is not None:
            self.on_lost()  # after the bookkeeping: watching_root() is already False

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


class Emitter(InotifyEmitter):
    """An InotifyEmitter whose watch group reports queue overflows and its end."""

    def __init__(self, *args: Any, on_overflow: Callable[[], None], on_lost: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_overflow = on_overflow
        self._on_lost = on_lost

    @property
    def group(self) -> WatchGroup | None:
        """The watch group (None once stopped)."""
        group = self._inotify
        return group if isinstance(group, WatchGroup) else None

    def watching(self) -> bool:
        """Whether this emitter still watches its path (it stops itself when the path is deleted)."""
        group = self.group
        return self.should_keep_running() and group is not None and group.watching_root()

    def on_thread_start(self) -> None:
        self._inotify = WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            on_overflow=self._on_overflow,
            on_lost=self._on_lost,
        )


class Observer(BaseObserver):
    """One inotify instance for all our watches, with overflow reporting."""

    def __init__(self, on_overflow: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self._fd = InotifyFD()
        self._fd.start()
        super().__init__(Emitter, timeout=1.0, inotify_fd=self._fd, on_overflow=on_overflow,
                         on_lost=on_lost)

    @property
    def inotify(self) -> InotifyFD:
        """The one inotify instance (anchor watches join it, without threads of their own)."""
        return self._fd

    def drain(self, watch: ObservedWatch, drained: threading.Event, timeout: float = 2.0) -> None:
        """Wait (bounded) until the events of a dead `watch` were handled, so that unscheduling it
        loses none: the deletes of a tagged tree, its own last."""
        with self._lock:
            emitter = self._emitter_for_watch.get(watch)
        if isinstance(emitter, Emitter):
            deadline = time.monotonic() + timeout
            # the kernel ends a watch (IN_IGNORED) after its last events; a tree moved away
            # never ends, hence the deadline
            group = emitter.group
            while group is not None and group.watching_root() and time.monotonic() < deadline:
                time.sleep(0.01)
            if group is not None and group.root_deleted:
                emitter.join(max(0.0, deadline - time.monotonic()))  # stops itself after queuing it
        self.event_queue.put((DirModifiedEvent(BARRIER), watch))  # handled in order, after those
        drained.wait(timeout)

    def is_watching(self, watch: ObservedWatch) -> bool:
        """Whether `watch` still watches its path."""
        with self._lock:
            emitter = self._emitter_for_watch.get(watch)
        return isinstance(emitter, Emitter) and emitter.watching()

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._fd.stop()
        self._fd.join()


class Dispatch(FileSystemEventHandler):
    """Hands each event to one function; a failure is logged, never kills the observer thread."""

    def __init__(self, handle: Callable[[FileSystemEvent], None]) -> None:
        self._handle = handle
        self.drained = threading.Event()

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.src_path == BARRIER:
            self.drained.set()
            return
        try:
            self._handle(event)
        except Exception:  # one bad event must not stop the observer thread
            log.exception("file event handling failed")
