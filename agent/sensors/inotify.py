"""watchdog's inotify watches as the file sensor needs them, in one thread.

One inotify instance (watchdog's `InotifyFD`, its one reader thread) for every watch: tagged
trees, removable mounts, and the PendingRoots anchors. Each recursive watch is watchdog's
`InotifyWatchGroup` (it adds the watches of new directories, walks them, follows moves), but
its events are built and handed to the sensor's handler in the reader thread as they are read:
watchdog's observer passed each one through two more threads and queues (an emitter thread per
watch, then a dispatcher), a thread switch and a lock hand-over per event per step, which cost
more than the sensor's own work on the event. Only a rename's first half (`IN_MOVED_FROM`)
waits, at most 0.5 s as in watchdog, for its second half, and the events behind it with it.

watchdog rebuilds its watches after a queue overflow and ends a watch whose directory was
deleted, telling nobody; here both are reported (`on_overflow`, `on_lost`), and
`Observer.drain` lets the sensor unschedule a dead watch without losing its events.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    FileCreatedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD, WatchDescriptor
from watchdog.observers.inotify_move_event_grouper import GroupedInotifyEvent, PathedInotifyEvent

log = logging.getLogger(__name__)

MOVE_WAIT = 0.5  # seconds an IN_MOVED_FROM waits for its IN_MOVED_TO (watchdog's delay)
_DIR_MADE = InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR
_DIR_MOVED_IN = InotifyConstants.IN_MOVED_TO | InotifyConstants.IN_ISDIR
_ISDIR = InotifyConstants.IN_ISDIR
_CREATE = InotifyConstants.IN_CREATE


class Grouper:
    """In place of watchdog's move grouper: events in order, each handed on as soon as nothing
    before it waits; an `IN_MOVED_FROM` waits up to `MOVE_WAIT` for its `IN_MOVED_TO` (the
    pair then goes on as one move, where the second half came), else goes on alone (a delete).
    Filled under the watch group's lock; handed on by `flush`, outside it."""

    def __init__(self, deliver: Callable[[GroupedInotifyEvent], None]) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()       # the queue
        self._handing = threading.RLock()   # one deliverer at a time, in order
        self._queue: collections.deque[tuple[GroupedInotifyEvent, float]] = collections.deque()
        self._timer: threading.Timer | None = None
        self._closed = False

    # ------------------------------------------------ watchdog's grouper interface

    def put_event(self, event: PathedInotifyEvent) -> None:
        """Queue one event (a rename's second half joins its first)."""
        due = 0.0
        grouped: GroupedInotifyEvent = event
        with self._lock:
            if event.ev.is_moved_from:
                due = time.monotonic() + MOVE_WAIT
            elif event.ev.is_moved_to:
                first = self._take_from(event.ev.cookie)
                if first is not None:
                    grouped = (first, event)
            self._queue.append((grouped, due))

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        """The first half of the rename `cookie`, still waiting (left in place)."""
        with self._lock:
            for item, _due in self._queue:
                if _first_half(item, cookie):
                    return item  # type: ignore[return-value]  # _first_half says it is one
        return None

    def discard_pending_events(self) -> None:
        """Events lost (a queue overflow): what waits is no longer in a trustworthy order."""
        with self._lock:
            self._queue.clear()

    def close(self) -> None:
        """The watch ended."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _take_from(self, cookie: int) -> PathedInotifyEvent | None:
        # under the lock
        for at, (item, _due) in enumerate(self._queue):
            if _first_half(item, cookie):
                del self._queue[at]
                return item  # type: ignore[return-value]  # _first_half says it is one
        return None

    # ------------------------------------------------------------- handing on

    def flush(self, *, force: bool = False) -> None:
        """Hand on every event nothing waits before (`force`: the waiting ones too)."""
        with self._handing:
            while True:
                with self._lock:
                    if not self._queue:
                        return
                    item, due = self._queue[0]
                    wait = due - time.monotonic() if due and not force else 0.0
                    if wait > 0:
                        self._arm(wait)
                        return
                    self._queue.popleft()
                try:
                    self._deliver(item)
                except Exception:  # one bad event must not stop the reader thread
                    log.exception("file event handling failed")

    def _arm(self, wait: float) -> None:
        # under the lock: flush again when the first waiting half is due
        if self._timer is None and not self._closed:
            self._timer = threading.Timer(wait, self._due)
            self._timer.daemon = True
            self._timer.start()

    def _due(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()


def _first_half(item: GroupedInotifyEvent, cookie: int) -> bool:
    """Whether `item` is the waiting first half (IN_MOVED_FROM) of the rename `cookie`."""
    return isinstance(item, PathedInotifyEvent) and item.ev.is_moved_from and item.ev.cookie == cookie


@dataclass
class WatchGroup(InotifyWatchGroup):
    """watchdog's watch group, delivering through a `Grouper`, plus call-outs when the kernel
    queue overflowed or the watch ended."""

    deliver: Callable[[GroupedInotifyEvent], None] | None = None
    on_overflow: Callable[[], None] | None = None
    on_lost: Callable[[], None] | None = None
    root_deleted: bool = False  # the watched directory itself was deleted (not unmounted, not moved)
    grouper: Grouper = field(init=False)

    def __post_init__(self) -> None:
        assert self.deliver is not None
        self.grouper = Grouper(self.deliver)
        self._move_event_grouper = self.grouper  # type: ignore[assignment]  # same interface
        super().__post_init__()  # adds the watches: events may come from here on

    def on_event(self, event: InotifyEvent) -> None:
        if event.is_delete_self and self._active_callbacks_by_watch.get(event.wd) == self.path:
            self.root_deleted = True
        super().on_event(event)

    def directory(self, wd: WatchDescriptor) -> bytes | None:
        """The directory watched by `wd` in this group (None: not one of ours)."""
        return self._active_callbacks_by_watch.get(wd)

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
    """watchdog's emitter without its thread: builds the events of what the group hands it
    and gives those the filter lets through to the watch's handler, in the reader thread."""

    def __init__(self, watch: ObservedWatch, inotify_fd: InotifyFD, handler: Dispatch, *,
                 on_overflow: Callable[[], None], on_lost: Callable[[], None]) -> None:
        wanted = list(watch.event_filter) if watch.event_filter is not None else None
        super().__init__(EventQueue(), watch, event_filter=wanted, inotify_fd=inotify_fd)
        self.handler = handler
        self._wanted = tuple(watch.event_filter or (FileSystemEvent,))
        self._plain_creates = not any(issubclass(DirModifiedEvent, kind) for kind in self._wanted)
        self._on_overflow = on_overflow
        self._on_lost = on_lost

    @property
    def group(self) -> WatchGroup | None:
        """The watch group (None once stopped)."""
        group = self._inotify
        return group if isinstance(group, WatchGroup) else None

    def watching(self) -> bool:
        """Whether this watch still watches its path (it ends when the path is deleted)."""
        group = self.group
        return self.should_keep_running() and group is not None and group.watching_root()

    def on_thread_start(self) -> None:
        self._inotify = WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            deliver=self._deliver,
            on_overflow=self._on_overflow,
            on_lost=self._on_lost,
        )

    def _deliver(self, event: GroupedInotifyEvent) -> None:
        if not self.should_keep_running():
            return
        if (self._plain_creates and isinstance(event, PathedInotifyEvent)
                and event.ev.mask & ~_ISDIR == _CREATE):
            # the common event: a file or directory made. watchdog builds the parent's
            # DirModifiedEvent with it, which carries nothing and no filter of ours lets through
            made = DirCreatedEvent if event.ev.mask & _ISDIR else FileCreatedEvent
            self.queue_event(made(self._decode_path(event.path)))
            return
        self.build_and_queue_event(event)

    def queue_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, self._wanted):
            self.handler.dispatch(event)


class Reader(InotifyFD):
    """watchdog's inotify reader thread, which first shows each batch it read to `early`, and
    calls `read` once the batch is in the watch groups' queues."""

    def __init__(self, early: Callable[[list[InotifyEvent]], None], read: Callable[[], None]) -> None:
        super().__init__()
        self.name = "exfilguard-inotify-read"  # its CPU is told apart by name (bench.sensors)
        self._early = early
        self._read = read

    def run(self) -> None:
        while self.should_keep_running():
            events = self.read_events()
            try:
                self._early(events)
            except Exception:
                log.exception("inotify early look failed")
            for event in events:
                self.handle_event(event)
            self._read()


class Observer:
    """One inotify instance for all our watches, with overflow reporting: a reader thread
    (watchdog's) keeps the watches (new directories, moves) and queues the events, one batch at
    a time; a handler thread builds them and hands them to each watch's handler, in order.

    `on_dir_made(path)` hears of each directory made (or moved) under a watch as soon as the
    batch holding it was read, before the batch's events are handled in order: a burst of
    files in one directory does not hold back the fanotify mark of the next one."""

    def __init__(self, on_overflow: Callable[[], None], on_lost: Callable[[], None],
                 on_dir_made: Callable[[str], None] | None = None) -> None:
        self._on_overflow = on_overflow
        self._on_lost = on_lost
        self._on_dir_made = on_dir_made
        self._lock = threading.Lock()
        self._emitters: dict[ObservedWatch, Emitter] = {}
        self._ready = threading.Event()  # a batch was queued
        self._stopping = False
        self._fd = Reader(self._early, self._ready.set)
        self._fd.start()
        self._handler = threading.Thread(target=self._handle_loop, name="exfilguard-inotify", daemon=True)
        self._handler.start()

    def _handle_loop(self) -> None:
        while not self._stopping:
            self._ready.wait()
            self._ready.clear()
            for group in self._groups():
                group.grouper.flush()

    def _early(self, events: list[InotifyEvent]) -> None:
        if self._on_dir_made is None:
            return
        made = [e for e in events
                if e.mask & _DIR_MADE == _DIR_MADE or e.mask & _DIR_MOVED_IN == _DIR_MOVED_IN]
        if not made:
            return
        groups = self._groups()
        for event in made:
            for group in groups:
                parent = group.directory(event.wd)
                if parent is not None:
                    self._on_dir_made(os.fsdecode(parent + b"/" + event.name))
                    break

    def _groups(self) -> list[WatchGroup]:
        with self._lock:
            return [group for emitter in self._emitters.values() if (group := emitter.group) is not None]

    @property
    def inotify(self) -> InotifyFD:
        """The one inotify instance (anchor watches join it, without threads of their own)."""
        return self._fd

    def start(self) -> None:
        """Nothing to start: the reader thread runs from construction (watches may be added before)."""

    def schedule(self, handler: Dispatch, path: str, *, recursive: bool,
                 event_filter: list[type[FileSystemEvent]] | None = None) -> ObservedWatch:
        """Watch `path` (and below it, `recursive`), handing `handler` the events `event_filter`
        names; OSError when it cannot be watched."""
        watch = ObservedWatch(path, recursive=recursive, event_filter=event_filter)
        emitter = Emitter(watch, self._fd, handler, on_overflow=self._on_overflow, on_lost=self._on_lost)
        with self._lock:
            if watch in self._emitters:
                raise ValueError(f"{path} is watched already with that filter")
            emitter.on_thread_start()  # the group adds its watches (OSError: gone, unreadable)
            self._emitters[watch] = emitter
        return watch

    def unschedule(self, watch: ObservedWatch) -> None:
        """Stop watching; KeyError when `watch` is not (or no longer) scheduled."""
        with self._lock:
            emitter = self._emitters.pop(watch)
        emitter.stop()

    def drain(self, watch: ObservedWatch, drained: threading.Event, timeout: float = 2.0) -> None:
        """Wait (bounded) until the events of a dead `watch` were handled, so that unscheduling it
        loses none: the deletes of a tagged tree, its own last."""
        with self._lock:
            emitter = self._emitters.get(watch)
        if emitter is not None:
            deadline = time.monotonic() + timeout
            # the kernel ends a watch (IN_IGNORED) after its last events, which the reader thread
            # has handed on by then; a tree moved away never ends, hence the deadline
            group = emitter.group
            while group is not None and group.watching_root() and time.monotonic() < deadline:
                time.sleep(0.01)
            if group is not None:
                group.grouper.flush(force=True)  # a rename's first half still waiting: a delete
        drained.set()

    def is_watching(self, watch: ObservedWatch) -> bool:
        """Whether `watch` still watches its path."""
        with self._lock:
            emitter = self._emitters.get(watch)
        return emitter is not None and emitter.watching()

    def stop(self) -> None:
        """End every watch and the reader thread."""
        with self._lock:
            emitters = list(self._emitters.values())
            self._emitters.clear()
        for emitter in emitters:
            with contextlib.suppress(Exception):
                emitter.stop()
        self._fd.stop()
        self._stopping = True
        self._ready.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader and handler threads to end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._fd.join(timeout)
        self._handler.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class Dispatch(FileSystemEventHandler):
    """Hands each event to one function; a failure is logged, never kills the reader thread."""

    def __init__(self, handle: Callable[[FileSystemEvent], None],
                 on_failure: Callable[[], None] | None = None) -> None:
        self._handle = handle
        self._on_failure = on_failure or (lambda: None)  # an event lost to an error: counted in a gap
        self.drained = threading.Event()

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except Exception:  # one bad event must not stop the reader thread
            log.exception("file event handling failed")
            self._on_failure()
