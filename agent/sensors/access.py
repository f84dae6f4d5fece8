"""AccessReporter: what fanotify saw, turned into exactly attributed events.

Tagged files: FAN_OPEN is `file.open` (and a read for lineage and staging),
close-without-write `file.read`, close-after-write `file.modify`; opened by another name (a
hard link, a bind mount: links.py), `file.path` is that name and `exfilguard.source.path` the
tagged file, which lineage and staging are told of. Removable mounts:
close-after-write goes to the CopyDetector. Elsewhere: a close-after-write by a process
carrying tagged data (lineage.py) makes the file derived (indexed with its provenance, its
reads watched) and goes to the StagingDetector (archives). Reads of derived files carry
their sources on; they are not reported as events of their own.
"""



from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.sensors import Emit, procinfo, provenance
from agent.sensors.copies import CopyDetector, written_text
from agent.sensors.derivedinodes import follow as follow_derived
from agent.sensors.deviceopens import device_writers
from agent.sensors.errors import FanotifyUnavailable
from agent.sensors.failures import FailedEvents, sensor_gap
from agent.sensors.fanotify import FAN_CLOSE_NOWRITE, FAN_CLOSE_WRITE, FAN_OPEN, Access, FanotifySensor
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.forks import ForkWatch
from agent.sensors.lineage import SourceRead
from agent.sensors.links import TaggedInodes
from agent.sensors.media import RemovableMedia, RemovableMount, unwatched
from agent.sensors.mounts import MOUNTINFO, parse_mountinfo
from agent.sensors.newdirs import NewDirectories
from agent.sensors.staging import StagingDetector, Written, file_fields
from agent.sensors.tags import TagMap
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, sibling_event

log = logging.getLogger(__name__)

_READERS_REMEMBERED = 1024  # processes with tagged files open now, oldest out
_HELD_REMEMBERED = 64  # of those files per process
_OPENS_REMEMBERED = 4096  # tagged files open at once that a close is compared with, oldest out
_UNCHANGED_NS = 1_000_000_000  # a file whose inode changed within this long was written (or may be)
# A tagged file held open while the holder writes to removable media counts as read during the
# write only if it was opened this recently: gpg opens its input, derives its key (seconds on a
# busy machine), then writes; an office suite or a Python session that opened a tagged file
# this morning and keeps it open is not reading it into what it saves now (a guess at most).
HELD_READ_SECONDS = 30.0


@dataclass(eq=False)
class AccessReporter:
    """Handlers for what FanotifySensor sees: tagged accesses, removable and other writes."""

    tags: TagMap
    index: FingerprintIndex
    copies: CopyDetector
    staging: StagingDetector
    emit: Emit
    media: RemovableMedia | None = field(default=None, kw_only=True)
    # set by the fanotify sensor: watch the reads of a file that just became derived
    on_derived: Callable[[str], None] | None = field(default=None, init=False)
    # set by the fanotify sensor: a tagged file was written (its directory may be new, unmarked)
    on_written: Callable[[str], None] | None = field(default=None, init=False)
    # set by the fanotify sensor: a process's identity as its cache knows it (exited ones too)
    lookup: Callable[[int], procinfo.ProcessInfo | None] | None = field(default=None, init=False)
    _dropped_reported: int = field(default=0, init=False)
    # (pid, path) of tagged files open now -> their change time when opened
    _opened: dict[tuple[int, str], int] = field(default_factory=dict, init=False)
    # pid -> tagged (or derived) files it has open for reading now: (size, when opened, monotonic)
    _reading: dict[int, dict[str, tuple[int, float]]] = field(default_factory=dict, init=False)
    _dropped_at: float = field(default=0.0, init=False)

    def tagged_as(self, path: str) -> tuple[str, ...] | None:
        """The tags fanotify should treat this path with: a tagged file's, none for one derived
        from tagged data; None when it is neither."""
        tags = self.tags.tags_of(path)
        if tags or self.index.is_derived(path):
            return tags
        return None

    def tagged(self, access: Access) -> None:
        """An open, read or write of a tagged file (or a read of a derived one)."""
        tags = list(access.tags)
        if not tags:
            self._derived_read(access)
            return
        try:
            st = os.fstat(access.fd)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return  # directory listings are not file reads
        actions = []
        mask = access.mask
        wrote = bool(mask & FAN_CLOSE_WRITE) and self._wrote(access, st)
        if mask & FAN_OPEN:
            actions.append("file.open")
            self.staging.note_read(access.pid, access.process, access.path, tags)
            if not mask & (FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE):
                self._remember_open(access, st)
                self._open_for_reading(access.pid, access.path, st.st_size)
        read_at = None
        if not mask & FAN_OPEN and mask & (FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE):
            self._opened.pop((access.pid, access.path), None)
            read_at = self._closed(access.pid, access.path)
        # opened for writing and closed unchanged (sqlite3 opens a database read-write to query
        # it): a read, not a modification
        ended_read = bool(mask & FAN_CLOSE_NOWRITE or (mask & FAN_CLOSE_WRITE and not wrote))
        if ended_read:
            actions.append("file.read")
        # a read (at its open, and again as it ends: what it read flows into what is written
        # from here on) is noted once for an open and its close seen together, and not for an
        # open whose close wrote (forgotten just below)
        if ended_read or (mask & FAN_OPEN and not mask & FAN_CLOSE_WRITE):
            self.copies.note_read(access.pid, access.process, access.path, tags, st.st_size, at=read_at)
        if wrote:
            actions.append("file.modify")
            if self.on_written is not None:
                self.on_written(access.path)
            self.copies.forget_read(access.pid, access.path)
            # read through it (no open reported back); its look at the file as closed stands for
            # the path's
            self.index.update(access.path, fd=access.fd, looked=st)
        if not actions:
            return
        event = procinfo.attributed_event(actions[0], access.tags, access.process, procinfo.EXACT,
                                          access.pid, file=file_fields(access.via or access.path, st.st_size))
        if access.via:  # opened by another name (a hard link, a bind mount): which tagged file it is
            event.exfilguard.source.path = fs_text(access.path)
            event.exfilguard.source.tags.extend(access.tags)
        events = [event, *(sibling_event(event, action) for action in actions[1:])]  # before any emit
        for event in events:
            self.emit(event)

    def _remember_open(self, access: Access, st: os.stat_result) -> None:
        """The inode change time of a tagged file as it was opened: its close-after-write is
        a modification only if the file changed since (reader thread only: no lock)."""
        self._opened[(access.pid, access.path)] = st.st_ctime_ns
        if len(self._opened) > _OPENS_REMEMBERED:
            del self._opened[next(iter(self._opened))]

    def _wrote(self, access: Access, st: os.stat_result) -> bool:
        """Whether a close-after-write of a tagged file changed it: its inode changed within
        the last second (a write, a truncate, or a copy setting old times: utime changes
        the change time too), or since its open was seen."""
        opened = self._opened.pop((access.pid, access.path), None)
        if st.st_ctime_ns >= time.time_ns() - _UNCHANGED_NS:
            return True
        return opened is not None and opened != st.st_ctime_ns

    def _derived_read(self, access: Access) -> None:
        path = access.path
        if access.via and follow_derived(self.index, path, access.via):
            path = access.via  # moved (or linked) since it was derived: known by its name now
        closed = bool(access.mask & (FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE))
        read_at = self._closed(access.pid, path) if closed else None
        if access.mask & (FAN_OPEN | FAN_CLOSE_NOWRITE):
            self.copies.flow.note_read(access.pid, self.derived_reads(path, at=read_at))
        if not closed and access.mask & FAN_OPEN:
            self._open_for_reading(access.pid, path, 0)

    def derived_inode(self, fd: int) -> tuple[str, tuple[str, ...]] | None:
        """The derived file an open descriptor is, by its inode, as (path as indexed, no tags):
        read under a name of its own since it was derived (`mv /tmp/x.enc ~/Downloads/`, a
        hard link), its inode mark still reports the read. None when it is none."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        path = self.index.derived_inodes.path_of(st.st_dev, st.st_ino)
        return (path, ()) if path is not None and stat.S_ISREG(st.st_mode) else None

    def _open_for_reading(self, pid: int, path: str, size: int) -> None:
        held = self._reading.get(pid)
        if held is None:
            held = self._reading[pid] = {}
            if len(self._reading) > _READERS_REMEMBERED:
                del self._reading[next(iter(self._reading))]
        if len(held) < _HELD_REMEMBERED:
            held[path] = (size, time.monotonic())

    def _closed(self, pid: int, path: str) -> float | None:
        """Forget a file closed; when it had been held open longer than HELD_READ_SECONDS, the
        wall time it was opened: its close is no sign of a read now (a holder that read it long
        ago), so its read is noted then. None: a read now."""
        held = self._reading.get(pid)
        if held is None:
            return None
        size_opened = held.pop(path, None)
        if not held:
            del self._reading[pid]
        if size_opened is None:
            return None
        age = time.monotonic() - size_opened[1]
        return time.time() - age if age > HELD_READ_SECONDS else None

    def still_reading(self, pid: int) -> None:
        """A process wrote to removable media while it holds tagged (or derived) files open:
        it is reading them now, however long ago it opened them (gpg derives its key from the
        passphrase between opening its input and creating its output: seconds on a busy
        machine), unless it opened them more than HELD_READ_SECONDS ago. Reader thread only."""
        held = self._reading.get(pid)
        if not held:
            return
        recent = time.monotonic() - HELD_READ_SECONDS
        for path, (size, opened) in list(held.items()):
            if opened < recent:
                continue
            tags = self.tags.tags_for(path)
            if tags:
                self.copies.note_read(pid, None, path, tags, size)
            else:
                self.copies.flow.note_read(pid, self.derived_reads(path))

    def derived_reads(self, path: str, at: float | None = None) -> list[SourceRead]:
        """The tagged data reading a derived file (at `at`, default now) stands for (none for
        any other file)."""
        found = self.index.provenance(path) if self.index.is_derived(path) else None
        if found is None:
            return []
        when = time.time() if at is None else at
        return [SourceRead(s.path, s.tags, s.bytes, when, found.evidence) for s in found.sources]

    def removable(self, access: Access) -> None:
        """A file finished being written on removable media."""
        try:
            size = os.fstat(access.fd).st_size
        except OSError:
            return
        pid, info, wrote = access.pid, access.process, self.copies.flow.writers(access.fd)
        if len(wrote) == 1 and wrote[0] != pid and self.lookup is not None:
            # the bytes' writer, not a closer that wrote none: `tar czf` forks a child that
            # opens the archive and runs `sh -c gzip`; gzip writes, the shell closes as it exits
            # (the kernel named gzip's pid in each write, and it was looked up as it wrote)
            found = self.lookup(wrote[0])
            if found is not None:
                pid, info = wrote[0], found
        writers = tuple(p for p in (access.pid, *wrote) if p != pid)
        self.copies.note_write(Written(path=access.path, size=size, pid=pid, info=info,
                                       fd=access.fd, attribution=procinfo.EXACT, writers=writers))
        self.report_dropped()

    def other_written(self, access: Access) -> None:
        """A process carrying tagged data closed a file it wrote elsewhere (reader thread, at
        once): the file is derived from here on (indexed with its provenance, its reads
        watched), so a process reading it right after carries its sources on."""
        try:
            size = os.fstat(access.fd).st_size
        except OSError:
            return
        pids = [access.pid, *self.copies.flow.child_writers(access.pid, access.path)]
        flow = self.copies.flow.flow(pids)
        created = provenance.created_at(access.fd)
        volumes = self.copies.volumes
        text = written_text(access.fd)
        ident = provenance.by_lineage(flow, size, volumes.start(access.pid, created), text=text)
        volumes.closed(access.pid, created, ident)
        if ident is None or size <= 0:
            return
        log.debug("derived %s (%d bytes, born %.3f) by pid %d: %s from %d sources, %d bytes read",
                  access.path, size, created or 0.0, access.pid, ident.identified_by, ident.files,
                  ident.bytes_read)
        self.index.add_derived(access.path, ident, fd=access.fd)
        if self.on_derived is not None:
            self.on_derived(access.path)
        # who opened it before its watch was in place (the next step of a script, while this
        # thread was behind): they read it now
        st = os.fstat(access.fd)
        reads = self.derived_reads(access.path)
        for pid in self.copies.flow.openers(st.st_dev, st.st_ino, (created or time.time()) - 1.0,
                                            writer=access.pid):
            if pid != access.pid:
                self.copies.flow.note_read(pid, reads)

    def other_write(self, access: Access) -> None:
        """The same write, a moment later under its final name: follow a rename, and report
        an archive (file.archive)."""
        try:
            size = os.fstat(access.fd).st_size
        except OSError:
            return
        written = Written(path=access.path, size=size, pid=access.pid, info=access.process,
                          fd=access.fd, attribution=procinfo.EXACT)
        ident = self.index.provenance(access.first_path or access.path)
        if ident is None or not ident.evidence:  # a guess makes no archive of tagged files
            self.staging.note_write(written)
            return
        if access.first_path and access.first_path != access.path:
            self.index.add_derived(access.path, ident)  # zip writes a temporary name, then renames
            self.index.remove(access.first_path)
        self.staging.note_write(written, flow_files=ident.files, flow_tags=tuple(ident.tags))
        self.report_dropped()

    def report_dropped(self, every: float = 60.0) -> None:
        """An agent.gap when a lineage bound forgot data (at most once per `every` seconds):
        copies of what it forgot may go unrecognised."""
        dropped = self.copies.flow.dropped + self.index.derived_dropped
        now = time.monotonic()
        if dropped <= self._dropped_reported or now - self._dropped_at < every:
            return
        lost, self._dropped_reported, self._dropped_at = dropped - self._dropped_reported, dropped, now
        self.emit(sensor_gap("lineage_limit", lost,
                             f"lineage bounds forgot {lost} tagged reads, process links or derived files"))


class ExactAccessSensor:
    """Owns the fanotify group: marks tagged trees, removable mounts, and the system's file
    systems, memory ones (/dev/shm, tmpfs) included (writes, for files derived from tagged
    data; execs, to name short-lived processes and record their pipes)."""

    name = "fanotify"

    def __init__(self, tags: TagMap, reporter: AccessReporter, media: RemovableMedia,
                 system_paths: tuple[str, ...] = ("/", "/usr", "/tmp", "/home", "/var/tmp", "/root", "/opt"),
                 max_file_marks: int = 1_000_000) -> None:
        self.tags = tags
        self.media = media
        self._system_paths = system_paths
        flow = reporter.copies.flow
        self.failed = FailedEvents(reporter.emit, "fanotify")  # handling that raised: in an agent.gap
        # every tagged file by its inode: an open through a hard link or a bind mount is a tagged read
        self.inodes = TaggedInodes(self._mark_file, tags.tags_of, max_file_marks, self._marks_full,
                                   shared=reporter.index.stored_path)
        self.fanotify = FanotifySensor(
            tagged_as=reporter.tagged_as,
            is_removable=lambda path: media.mount_for(path) is not None,
            on_tagged=reporter.tagged,
            on_removable=reporter.removable,
            on_other_write=reporter.other_write,
            on_other_now=reporter.other_written,
            wants_pid=lambda pid: (reporter.staging.wants_pid(pid) or flow.carried_by(pid)
                                   or flow.has_carrying_child(pid)),
            on_overflow=self._overflowed,
            on_exec=flow.note_exec,
            on_write=self._removable_write,
            on_failure=self.failed,
            tagged_inode=lambda fd: self.inodes.source(fd) or reporter.derived_inode(fd),
        )
        self._reporter = reporter
        reporter.on_derived = self.fanotify.mark_file
        reporter.lookup = self.fanotify.processes.lookup
        self.forks = ForkWatch()  # who forked a child that was gone before anything read it
        self.fanotify.processes.forks = self.forks.parent_of
        flow.held = reporter.derived_reads
        self._emit = reporter.emit
        self.copies = reporter.copies
        self.marks = 0
        # others that mark new tagged directories too (the prevention guard)
        self.also_mark: list[Callable[[str], None]] = []
        self._system_devs: set[int] = set()  # file systems whose writes are marked
        self._base_devs: frozenset[int] = frozenset()  # of them, those of the system paths
        self.device_writers = device_writers()  # who writes to raw removable devices
        self.new_dirs = NewDirectories(tags, reporter.emit, self._mark_new_dir,
                                       system_devs=lambda: self._system_devs)
        reporter.on_written = self._written

    def _mark_file(self, path: str) -> None:
        self.fanotify.mark_file(path)

    def _marks_full(self, count: int) -> None:
        text = (f"sensors.max_file_marks reached: {count} tagged files have no mark of their own; reads of "
                "them through a hard link made later are not seen")
        self._emit(sensor_gap("file_marks_full", count, text))

    def _written(self, path: str) -> None:
        self.new_dirs.written(path)
        self.inodes.mark_file(path)  # a new tagged file: its inode mark goes in as it is first written

    def mark_file(self, path: str) -> None:
        """A file appeared in a tagged tree (created, moved in): mark its inode."""
        self.inodes.mark_file(path)

    def start(self) -> None:
        """Mark everything, then read events."""
        self.forks.start()  # first: a fork heard of before its child's writes are read
        self.fanotify.start()
        if self.device_writers is not None:
            self.device_writers.start()
        self.mark_tagged()
        seen_devs: set[int] = set()
        for path in self._system_paths:
            try:
                dev = Path(path).stat().st_dev
            except OSError:
                continue
            if dev not in seen_devs:
                seen_devs.add(dev)
                self.fanotify.mark_filesystem(path)
        self._base_devs = frozenset(seen_devs)
        self.mark_memory_file_systems()
        self.media.subscribe(self._mount_changed)

    def mark_memory_file_systems(self) -> None:
        """Mark the memory file systems users can stage data on (at start, and at every change
        of the mount table): a user's /run/user/UID is mounted at login, after the agent
        started, and an archive encrypted there and then copied to a stick was never derived
        (the copy raised nothing). Each is marked again at each change: one mounted anew where
        another was is a new file system, which the kernel may number as the old one."""
        devs = set(self._base_devs)
        for point in _memory_file_systems():
            try:
                dev = Path(point).stat().st_dev
            except OSError:
                continue
            if dev not in self._base_devs:
                try:
                    self.fanotify.mark_filesystem(point, again=True)
                except FanotifyUnavailable as exc:  # on the mount table's thread: its check goes on
                    log.warning("%s cannot be watched for staged data: %s", point, exc)
                    continue
            devs.add(dev)
        self._system_devs = devs

    def stop(self) -> None:
        """Close the group; idempotent."""
        self.fanotify.stop()
        self.forks.stop()
        if self.device_writers is not None:
            self.device_writers.stop()
        self.new_dirs.stop()
        self.failed.flush()

    def mark_tagged(self) -> None:
        """(Re-)mark every directory of every tagged tree (start, and after a rescan)."""
        for root in self.tags.top_roots():
            self.mark_root(root)

    def mark_root(self, root: str) -> None:
        """Mark a tagged tree that appeared after start (or came back)."""
        self.new_dirs.tree_marking(root)
        self.marks += self.fanotify.mark_tree(root)
        self.marks += self.inodes.mark_tree(root)

    def mark_dir(self, path: str) -> None:
        """Mark a new directory inside a tagged tree (inotify saw it), and report what was
        accessed in it before the mark."""
        self.new_dirs.appeared(path, reported=True)

    def _mark_new_dir(self, path: str) -> None:
        self.fanotify.mark_dir(path)
        self.inodes.mark_dir(path)  # its files (a directory moved in has some)
        for mark in self.also_mark:
            mark(path)

    def _removable_write(self, pid: int, fd: int, modified: bool) -> None:
        self.copies.flow.note_write(pid, fd, modified=modified)
        self._reporter.still_reading(pid)

    def device_attached(self, device: pb.Device) -> None:
        """A removable block device appeared: note who opens its node for writing."""
        if self.device_writers is not None:
            self.device_writers.watch(device.name)

    def device_detached(self, device: pb.Device) -> None:
        """It went: forget its node."""
        if self.device_writers is not None:
            self.device_writers.forget(device.name)

    def device_writer(self, node: str) -> procinfo.ProcessInfo | None:
        """The process that last wrote to the device node (dd has exited by the time the
        page cache reaches the device), if known."""
        return self.device_writers.writer(node) if self.device_writers is not None else None

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        why = self.fanotify.mark_mount(mount.point, add=appeared)
        if why:
            log.warning("%s (%s) cannot be watched: %s", mount.point, mount.mount.source, why)
            self._emit(unwatched(mount, why))
            return
        if appeared and mount.seen_at:
            # writes between the mount and its mark: found by a scan, attribution none
            threading.Thread(target=self.copies.catch_up, args=(mount, time.time()),
                             name="exfilguard-catch-up", daemon=True).start()

    def _overflowed(self) -> None:
        self._emit(sensor_gap("queue_overflow", 0, "fanotify queue overflowed: file events were lost"))



def _memory_file_systems() -> list[str]:
    """Mount points of tmpfs file systems where users can stage data (/dev/shm, a tmpfs /tmp,
    /run/user/UID); the kernel's and systemd's own are left alone."""
    try:
        entries = parse_mountinfo(Path(MOUNTINFO).read_text()).values()
    except OSError:
        return []
    out = []
    for entry in entries:
        point = entry.point
        if entry.fs_type != "tmpfs" or entry.read_only:
            continue
        if point in ("/dev/shm", "/tmp", "/var/tmp") or point.startswith("/run/user/"):
            out.append(point)
    return out
