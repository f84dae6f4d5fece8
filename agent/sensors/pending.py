"""PendingRoots: the directories where a tagged root may appear or go, watched cheaply.

A tagged path that does not exist yet (`/srv/db` restored after boot) or a glob's future
match (`/home/*/projects/secret` for a new user) cannot be watched itself. The TagMap names
its anchors: the nearest existing directory of a missing path, every directory a wildcard
is matched in, and the parent of each root. Each anchor gets one non-recursive inotify
watch on the file sensor's inotify instance (no thread of its own); an entry created,
moved or deleted there under a name that matters, or the anchor itself going, only wakes
the file sensor, which re-expands the tag map and watches, marks and indexes what appeared.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

log = logging.getLogger(__name__)

_CHILD = (InotifyConstants.IN_CREATE | InotifyConstants.IN_MOVED_TO | InotifyConstants.IN_MOVED_FROM
          | InotifyConstants.IN_DELETE)
_SELF = InotifyConstants.IN_DELETE_SELF | InotifyConstants.IN_MOVE_SELF | InotifyConstants.IN_UNMOUNT
# IN_MASK_ADD: an anchor inside a watched tree shares that tree's watch; add to its mask, never
# replace it (the tree's mask already holds these bits, so its re-adds lose nothing of ours).
_MASK = Mask(_CHILD | InotifyConstants.IN_DELETE_SELF | InotifyConstants.IN_MOVE_SELF
             | InotifyConstants.IN_ONLYDIR | InotifyConstants.IN_MASK_ADD)
MAX_ANCHORS = 4096  # a glob with a huge fan-out is bounded; the periodic re-check covers the rest


class PendingRoots:
    """inotify watches on anchor directories; `wake()` is called when one may matter."""

    def __init__(self, inotify: InotifyFD, wake: Callable[[], None]) -> None:
        self._inotify = inotify
        self._wake = wake
        self._id = CallbackId(id(self))
        self._lock = threading.Lock()  # update() runs in one thread; the lock guards the dead set
        # (st_dev, st_ino) -> (wd, path); an inode, not a path: a directory made again at the
        # same path is a new watch, and two paths of one directory (a bind mount) share one
        self._watched: dict[tuple[int, int], tuple[WatchDescriptor, str]] = {}
        self._names: dict[WatchDescriptor, tuple[str, ...]] = {}  # wd -> names that matter; replaced whole
        self._dead: set[WatchDescriptor] = set()
        self._warned = False

    def update(self, anchors: dict[str, tuple[str, ...]]) -> bool:
        """Watch exactly these anchors. True when a watch was added or an anchor vanished
        meanwhile: the caller looks again, for what appeared before the watch was in place."""
        wanted: dict[tuple[int, int], tuple[str, set[str]]] = {}
        again = False
        for path, entries in anchors.items():
            try:
                st = Path(path).stat()
            except OSError:
                again = True
                continue
            key = (st.st_dev, st.st_ino)
            wanted.setdefault(key, (os.path.realpath(path), set()))[1].update(entries)
        with self._lock:
            dead, self._dead = self._dead, set()
        for key, (wd, _path) in list(self._watched.items()):
            if key not in wanted or wd in dead:
                del self._watched[key]
                if wd not in dead:
                    self._inotify.remove_callbacks([(wd, self._id)])
        names: dict[WatchDescriptor, tuple[str, ...]] = {}
        for key, (path, wanted_names) in wanted.items():
            if key not in self._watched:
                if len(self._watched) >= MAX_ANCHORS:
                    self._warn(f"more than {MAX_ANCHORS} directories to watch for tagged paths; "
                               "the rest are re-checked periodically")
                    continue
                try:
                    wd = self._inotify.add_callback(os.fsencode(path), _MASK, self, self._id)
                except OSError as exc:  # ENOSPC: out of inotify watches; ENOENT: gone meanwhile
                    self._warn(f"cannot watch {path} for tagged paths: {exc}")
                    again = again or not Path(path).is_dir()
                    continue
                self._watched[key] = (wd, path)
                again = True
            names[self._watched[key][0]] = tuple(sorted(wanted_names))
        self._names = names
        return again

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)

    # ----------------------------------------------- WatchCallback (the inotify reader thread)

    def on_event(self, event: InotifyEvent) -> None:
        """An event on an anchor: wake the sensor if it may change a tagged root."""
        names = self._names.get(event.wd)
        if names is None:
            return
        if event.mask & _SELF:
            self._wake()
        elif event.mask & _CHILD:
            name = os.fsdecode(event.name)
            if any(fnmatchcase(name, pattern) for pattern in names):
                self._wake()

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        """The anchor directory was deleted or unmounted: look for the next one up."""
        with self._lock:
            self._dead.add(wd)
        self._wake()

    def on_queue_overflow(self) -> None:
        """Lost events (the file sensor rescans as well)."""
        self._wake()
