"""AccessReporter: what fanotify saw, turned into exactly attributed events.

Tagged files: FAN_OPEN is `file.open` (and a read for lineage and staging),
close-without-write `file.read`, close-after-write `file.modify`. Removable mounts:
close-after-write goes to the CopyDetector. Elsewhere: close-after-write by a process
that read tagged files goes to the StagingDetector (archives).
"""



from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from agent.sensors import Emit, procinfo
from agent.sensors.copies import CopyDetector
from agent.sensors.fanotify import FAN_CLOSE_NOWRITE, FAN_CLOSE_WRITE, FAN_OPEN, Access, FanotifySensor
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.media import RemovableMedia, RemovableMount
from agent.sensors.staging import StagingDetector, Written, file_fields
from agent.sensors.tags import TagMap
from protos.events import new_event


class AccessReporter:
    """Handlers for what FanotifySensor sees: tagged accesses, removable and other writes."""

    def __init__(self, tags: TagMap, index: FingerprintIndex, copies: CopyDetector,
                 staging: StagingDetector, emit: Emit, *, media: RemovableMedia | None = None) -> None:
        self.tags = tags
        self.media = media
        self.index = index
        self.copies = copies
        self.staging = staging
        self.emit = emit

    def is_tagged(self, path: str) -> bool:
        """Whether fanotify should treat this path as tagged."""
        return bool(self.tags.tags_for(path))

    def tagged(self, access: Access) -> None:
        """An open, read or write of a tagged file."""
        tags = self.tags.tags_for(access.path)
        if not tags:
            return
        try:
            st = os.fstat(access.fd)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return  # directory listings are not file reads
        actions = []
        if access.mask & FAN_OPEN:
            actions.append("file.open")
            self.copies.note_read(access.pid, access.process, access.path, tags)
            self.staging.note_read(access.pid, access.process, access.path, tags)
        if access.mask & FAN_CLOSE_NOWRITE:
            actions.append("file.read")
        if access.mask & FAN_CLOSE_WRITE:
            actions.append("file.modify")
            self.copies.forget_read(access.pid, access.path)
            self.index.update(access.path)
        for action in actions:
            event = new_event(action, tags=tags, file=file_fields(access.path, st.st_size))
            procinfo.describe(event, access.process, procinfo.EXACT, access.pid)
            self.emit(event)

    def removable(self, access: Access) -> None:
        """A file finished being written on removable media."""
        try:
            size = os.fstat(access.fd).st_size
        except OSError:
            return
        self.copies.note_write(Written(path=access.path, size=size, pid=access.pid, info=access.process,
                                       fd=access.fd, attribution=procinfo.EXACT))

    def other_write(self, access: Access) -> None:
        """A process that read tagged files wrote a file elsewhere (maybe an archive)."""
        try:
            size = os.fstat(access.fd).st_size
        except OSError:
            return
        self.staging.note_write(Written(path=access.path, size=size, pid=access.pid, info=access.process,
                                        fd=access.fd, attribution=procinfo.EXACT))


class ExactAccessSensor:
    """Owns the fanotify group: marks tagged trees, removable mounts, and the system's file
    systems (writes, for archives of tagged files; execs, to name short-lived processes)."""

    name = "fanotify"

    def __init__(self, tags: TagMap, reporter: AccessReporter, media: RemovableMedia,
                 system_paths: tuple[str, ...] = ("/", "/usr", "/tmp", "/home", "/var/tmp", "/root", "/opt")
                 ) -> None:
        self.tags = tags
        self.media = media
        self._system_paths = system_paths
        self.fanotify = FanotifySensor(
            is_tagged=reporter.is_tagged,
            is_removable=lambda path: media.mount_for(path) is not None,
            on_tagged=reporter.tagged,
            on_removable=reporter.removable,
            on_other_write=reporter.other_write,
            wants_pid=reporter.staging.wants_pid,
            on_overflow=self._overflowed,
        )
        self._emit = reporter.emit
        self.copies = reporter.copies
        self.marks = 0

    def start(self) -> None:
        """Mark everything, then read events."""
        self.fanotify.start()
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
        self.media.subscribe(self._mount_changed)

    def stop(self) -> None:
        """Close the group; idempotent."""
        self.fanotify.stop()

    def mark_tagged(self) -> None:
        """(Re-)mark every directory of every tagged tree (start, and after a rescan)."""
        for root in self.tags.top_roots():
            self.marks += self.fanotify.mark_tree(root)

    def mark_root(self, root: str) -> None:
        """Mark a tagged tree that appeared after start (or came back)."""
        self.marks += self.fanotify.mark_tree(root)

    def mark_dir(self, path: str) -> None:
        """Mark a new directory inside a tagged tree."""
        self.fanotify.mark_dir(path)

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        self.fanotify.mark_mount(mount.point, add=appeared)
        if appeared and mount.seen_at:
            # writes between the mount and its mark: found by a scan, attribution none
            threading.Thread(target=self.copies.catch_up, args=(mount, time.time()),
                             name="exfilguard-catch-up", daemon=True).start()

    def _overflowed(self) -> None:
        event = new_event("agent.gap")
        event.exfilguard.gap.reason = "queue_overflow"
        event.event.reason = "fanotify queue overflowed: file events were lost"
        event.exfilguard.attribution = procinfo.NONE
        self._emit(event)
