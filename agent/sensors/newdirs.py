"""NewDirectories: directories made inside a tagged tree after it was marked.

fanotify inode marks see only the children of marked directories, so the files of a directory
made later are not watched until it is marked too. It is marked as soon as either inotify
reports it (watchdog: its threads may be seconds behind in a burst) or fanotify reports a file
written in it (the system file-system marks see every close-after-write: at once, on the reader
thread). Whatever was read or written there before the mark cannot be attributed; the
directory is looked into as it is marked, and what it shows (a file read since it was written,
by its access time; a file written where no file-system mark saw the write) is reported as an
`agent.gap` with reason `unwatched_window` naming the directory, the window and the count.
"""

# Per-event hot path: os calls, not a Path per event.
# ruff: noqa: PTH119, PTH120

from __future__ import annotations

import collections
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from agent.sensors import Emit, procinfo, provenance
from agent.sensors.held import read_by_agent
from agent.sensors.tags import TagMap
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, new_event

log = logging.getLogger(__name__)

REASON = "unwatched_window"
# The clock file systems stamp a new inode's birth and change times with (a tick behind the
# precise one): a tree's marking is timed on it, so that a directory made a moment after the
# marking began never looks born before it (linux/time.h: CLOCK_REALTIME_COARSE).
_FILE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5)
_REMEMBERED = 16_384  # directories known (marked or old), most recent first out
_SCANNED = 10_000  # entries looked at in one new directory


@dataclass
class _Window:
    """Unwatched accesses found and not yet reported."""

    files: int
    read: int
    first: float
    last: float
    directories: list[str]

    def add(self, other: _Window) -> None:
        """Fold another directory's findings in."""
        self.files += other.files
        self.read += other.read
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        if len(self.directories) < 8:
            self.directories += other.directories


class NewDirectories:
    """Marks directories made inside tagged trees as soon as they are known, and reports what
    happened in them before the mark (`agent.gap`, at most one per `every` seconds, folded)."""

    def __init__(self, tags: TagMap, emit: Emit, mark: Callable[[str], None], *,
                 system_devs: Callable[[], set[int]], every: float = 10.0) -> None:
        self.tags = tags
        self._emit = emit
        self._mark = mark
        self._system_devs = system_devs  # file systems whose writes the system marks see
        self._every = every
        self._marked_at: dict[str, float] = {}  # tagged root -> wall time its tree walk began
        # directories marked here: by path (a tagged write's look-up) and by inode and birth time
        # (the mark follows the inode: a directory renamed inside the tree is watched already)
        self._known: collections.OrderedDict[str, tuple[int, int, float]] = collections.OrderedDict()
        self._inodes: collections.OrderedDict[tuple[int, int, float], None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pending: _Window | None = None
        self._reported_at = 0.0
        self._timer: threading.Timer | None = None
        self.gaps = 0

    def tree_marking(self, root: str) -> None:
        """A tagged tree is about to be walked and marked whole: directories born before now are
        marked by that walk."""
        # not time.time(): a directory made within the next clock tick (4 ms at HZ 250) showed
        # a birth time before it, was taken as marked by the walk that had passed its parent
        # already, and what was done in it before inotify's report marked it went unreported
        self._marked_at[root] = time.clock_gettime(_FILE_CLOCK)

    def written(self, path: str) -> None:
        """A tagged file was written (reader thread): its directory, and any new one above it,
        is marked now if it was not yet."""
        parent = os.path.dirname(path)
        if parent in self._known:
            return  # the common case: one dict look-up per tagged write
        chain = []
        while parent and parent not in self._known and self.tags.tags_for(parent):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(chain):  # from the top: a file made lower down is seen
            self.appeared(directory)

    def appeared(self, path: str, *, reported: bool = False) -> None:
        """A directory inside a tagged tree was made (or moved in): mark it, and if it is newer
        than its tree's marking, look into it for what happened before the mark. `reported`:
        inotify reported it made or moved in, so an older directory changed since the marking
        was moved in (a rename changes the moved directory's change time): from then on."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return  # gone already
        try:
            st = os.fstat(fd)
            birth = provenance.created_at(fd)
            # the birth time too: a directory deleted and made again under the same path often gets
            # its inode number back (ext4, tmpfs), and is a new inode with no mark
            identity = (st.st_dev, st.st_ino, birth or 0.0)
            with self._lock:
                self._known[path] = identity
                self._known.move_to_end(path)
                while len(self._known) > _REMEMBERED:
                    self._known.popitem(last=False)
                if identity in self._inodes:
                    return  # marked already (inotify and fanotify both tell of it, or renamed)
                self._inodes[identity] = None
                while len(self._inodes) > _REMEMBERED:
                    self._inodes.popitem(last=False)
            self._mark(path)
            marked = time.time()
            born = birth or st.st_ctime
        finally:
            os.close(fd)
        since = self._tree_marked(path)
        if since is None:
            return  # its root is not marked whole: nothing to say
        if born < since:
            if not reported or st.st_ctime < since:
                return  # the tree's walk marked it
            born = st.st_ctime  # moved in
        found = self._look_into(path, st.st_dev, born, marked)
        if found is not None:
            self._report(found)

    def stop(self) -> None:
        """Report what is pending now."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._flush()

    def _tree_marked(self, path: str) -> float | None:
        for root, at in list(self._marked_at.items()):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return at
        return None

    def _look_into(self, path: str, dev: int, born: float, marked: float) -> _Window | None:
        writes_seen = dev in self._system_devs()
        files = read = 0
        try:
            with os.scandir(path) as entries:
                for count, entry in enumerate(entries):
                    if count >= _SCANNED:
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    # read since its last change, within the window (relatime updates the access
                    # time at the first read after a change; a read within the same clock tick
                    # leaves no trace). The change time, not the modification time: a restore
                    # (tar x, cp -p, rsync -a) sets old modification times on files nobody read
                    was_read = born <= st.st_atime <= marked and st.st_atime > st.st_ctime \
                        and not read_by_agent(st)
                    unseen_write = not writes_seen and born <= st.st_ctime <= marked
                    if was_read or unseen_write:
                        files += 1
                        read += was_read
        except OSError:
            return None
        if not files:
            return None
        log.info("%d file(s) in %s were accessed before its watch was in place (%.3f s after it was made)",
                 files, path, marked - born)
        return _Window(files, read, born, marked, [path])

    def _report(self, found: _Window) -> None:
        now = time.monotonic()
        with self._lock:
            if self._pending is None:
                self._pending = found
            else:
                self._pending.add(found)
            if now - self._reported_at < self._every:
                if self._timer is None:  # the rest of this interval's findings go out together
                    self._timer = threading.Timer(self._every - (now - self._reported_at), self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            found, self._pending, self._timer = self._pending, None, None
            if found is None:
                return
            self._reported_at = time.monotonic()
        self.gaps += 1
        self._emit(_gap_event(found, self.tags.tags_for(found.directories[0])))


def _gap_event(found: _Window, tags: list[str]) -> pb.Event:
    event = new_event("agent.gap", tags=tags)
    event.file.path = fs_text(found.directories[0])
    event.file.name = fs_text(os.path.basename(found.directories[0]))
    event.file.type = "dir"
    event.exfilguard.gap.reason = REASON
    event.exfilguard.gap.lost = found.files
    event.exfilguard.gap.first.CopyFrom(_timestamp(found.first))
    event.exfilguard.gap.last.CopyFrom(_timestamp(found.last))
    more = len(found.directories) - 1
    where = found.directories[0]
    if more:
        where += f" and {more} more new director{'ies' if more > 1 else 'y'}"
    how = f"{found.read} read since written"
    if found.files > found.read:
        how += f", {found.files - found.read} written where no file-system mark saw it"
    event.event.reason = (
        f"{found.files} tagged file(s) in {where} were accessed before the agent's watch on the new "
        f"directory was in place ({how}): those accesses are not attributed to a process")
    event.exfilguard.attribution = procinfo.NONE
    return event


def _timestamp(wall: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts
