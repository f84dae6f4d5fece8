"""MountTable: mounts and unmounts of removable media, from the kernel's mount table.

Removable media are file systems on removable block devices, mounts whose file-system type
is an egress medium (`removable.file_systems`: network shares, phones over MTP) and
directories matching `removable.paths` inside a mount (GVfs shows each share or phone as a
directory of its one FUSE mount). /proc/self/mountinfo signals POLLPRI when the table
changes, so the sensor sleeps in poll() and re-reads only then (plus a slow timer, which
also finds GVfs directories, as they come and go without a change of the table).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from agent.background import Background
from agent.sensors import Emit, procinfo
from agent.sensors.failures import FailedEvents
from agent.sensors.media import RemovableMedia, RemovableMount, egress_device
from agent.sensors.stoppipe import StopPipe
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, new_event

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo."""

    mount_id: int
    point: str
    source: str
    fs_type: str
    read_only: bool


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> dict[int, MountEntry]:
    """mount id -> entry, for every line of a mountinfo file."""
    table: dict[int, MountEntry] = {}
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        options = parts[5].split(",")
        table[int(parts[0])] = MountEntry(
            mount_id=int(parts[0]),
            point=_unescape(parts[4]),
            source=_unescape(parts[sep + 2]),
            fs_type=parts[sep + 1],
            read_only="ro" in options,
        )
    return table


def _parts(path: str) -> list[str]:
    return path.rstrip("/").split("/")


def _same(point: str, pattern: str) -> bool:
    """Whether a mount point matches a glob whose `*` stays within one path component."""
    ours, theirs = _parts(point), _parts(pattern)
    return len(ours) == len(theirs) and all(map(fnmatch.fnmatchcase, ours, theirs))


def _overlap(point: str, pattern: str) -> bool:
    """Whether a mount point lies inside, at or above what a (glob) path names."""
    return all(map(fnmatch.fnmatchcase, _parts(point), _parts(pattern)))


class MountTable:
    """Reports `device.mount` / `device.unmount` for file systems on removable devices."""

    name = "mounts"

    def __init__(self, media: RemovableMedia, emit: Emit, poll_seconds: float = 2.0,
                 path: str = MOUNTINFO, on_change: Callable[[], None] | None = None,
                 *, tagged: Sequence[str] = ()) -> None:
        self.media = media
        self._tagged = tuple(tagged)  # tagged paths: a share holding them is where the data lives
        self._on_change = on_change  # any mount or unmount after start (a tagged path may come or go)
        self._emit = emit
        self.failed = FailedEvents(emit, "mount table")  # checks that raised: in an agent.gap
        self._poll_ms = int(poll_seconds * 1000)
        self._path = path
        self._lock = threading.Lock()
        self._table: dict[int, MountEntry] = {}
        self._tracked: dict[int, RemovableMount] = {}
        self._directories: dict[str, RemovableMount] = {}  # removable.paths matches, by point
        self._unreadable: set[int] = set()  # mounts removable.paths names that we cannot list
        # what the timer needs to look again for when the table's text has not changed: a
        # mount on a device udev has not described yet, and directories inside GVfs's mount
        self._text = ""
        self._pending = False
        self._background = Background("mounts", self._run)
        self._stop = StopPipe()
        self._fd = -1
        self._started = False  # mounts found by the first look were there before the agent

    def start(self) -> None:
        """Report removable mounts present now, then follow the mount table."""
        self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self.recheck()
        self._started = True
        self._background.start()

    def stop(self) -> None:
        """Stop following; idempotent."""
        self._stop.wake(self._background)
        self._stop.close()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        self.failed.flush()

    def recheck(self, _device: pb.Device | None = None, *, timer: bool = False) -> None:
        """Re-read the table and report changes (also called when a device attaches); tells
        `on_change` of any change, removable or not. `timer`: the slow timer's look, which
        reads the table but parses it only when it changed or something waits to be seen (the
        parse was 1-2 ms of an idle agent's CPU every 2 s)."""
        with self._lock:
            if self._fd < 0:
                return  # stopped (the device sensor may still call in while it stops)
            text = self._read()
            if text is None or (timer and text == self._text and not self._pending):
                return
            self._text = text
            table = parse_mountinfo(text)
            self._pending = any(e.source.startswith("/dev/") and self.media.device(e.source) is None
                                for e in table.values())
            if self._started and table != self._table and self._on_change is not None:
                self._on_change()
            self._table = table
            for mount_id in [m for m in self._tracked if m not in table]:
                gone = self._tracked.pop(mount_id)
                self.media.remove_mount(gone.point)
                self._emit_mount("device.unmount", gone)
            for mount_id, entry in table.items():
                if mount_id in self._tracked:
                    continue
                found = self._removable(entry)
                if found is not None:
                    self._tracked[mount_id] = found
                    self._appeared(found)
            self._follow_directories(table)

    def _removable(self, entry: MountEntry) -> RemovableMount | None:
        """The entry as removable media: on a removable block device, or of an egress type."""
        seen_at = time.time() if self._started else 0.0
        if entry.source.startswith("/dev/"):
            device = self.media.device(entry.source)
            if device is not None and device.removable:
                label, uuid = self.media.fs_identity(entry.source)
                # the label is the stick owner's to choose, bytes that are not UTF-8 included
                mount = pb.Mount(point=fs_text(entry.point), fs_type=fs_text(entry.fs_type),
                                 label=fs_text(label), uuid=fs_text(uuid), read_only=entry.read_only,
                                 source=fs_text(entry.source))
                return RemovableMount(entry.point, device, mount, seen_at)
        kind = self.media.policy.file_systems.get(entry.fs_type)
        if kind is None or any(_same(entry.point, p) for p in self.media.policy.not_egress_points) \
                or any(_overlap(entry.point, p) for p in self._tagged):
            return None
        mount = pb.Mount(point=fs_text(entry.point), fs_type=fs_text(entry.fs_type),
                         read_only=entry.read_only, source=fs_text(entry.source))
        return RemovableMount(entry.point, egress_device(kind, entry.source, entry.fs_type), mount, seen_at)

    def _follow_directories(self, table: dict[int, MountEntry]) -> None:
        """Directories matching removable.paths inside the mounts their parents name."""
        patterns = [(str(PurePath(p).parent), PurePath(p).name, kind)
                    for p, kind in self.media.policy.paths.items()]
        found: dict[str, RemovableMount] = {}
        seen_at = time.time() if self._started else 0.0
        for entry in table.values() if patterns else ():
            wanted = [(name, kind) for parent, name, kind in patterns
                      if fnmatch.fnmatchcase(entry.point, parent)]
            if not wanted or entry.mount_id in self._tracked:
                continue
            self._pending = True  # GVfs shows shares and phones there without a change of the table
            try:
                children = list(Path(entry.point).iterdir())
            except OSError as exc:
                if entry.mount_id not in self._unreadable:
                    self._unreadable.add(entry.mount_id)
                    # GVfs mounts without allow_other: not even root may look in
                    log.warning("cannot look into %s (%s %s): %s; shares and phones opened there "
                                "are not seen", entry.point, entry.fs_type, entry.source, exc.strerror)
                continue
            for child in children:
                name, point = child.name, str(child)
                kind = next((k for glob, k in wanted if fnmatch.fnmatchcase(name, glob)), None)
                if kind is None or not child.is_dir():
                    continue
                found[point] = self._directories.get(point) or RemovableMount(
                    point, egress_device(kind, name, entry.fs_type),
                    pb.Mount(point=fs_text(point), fs_type=fs_text(entry.fs_type), read_only=entry.read_only,
                             source=fs_text(name)),
                    seen_at)
        self._unreadable &= set(table)
        for point in [p for p in self._directories if p not in found]:
            self.media.remove_mount(point)
            self._emit_mount("device.unmount", self._directories.pop(point))
        for point, mount in found.items():
            if point not in self._directories:
                self._directories[point] = mount
                self._appeared(mount)

    def _appeared(self, mount: RemovableMount) -> None:
        self.media.add_mount(mount)
        self._emit_mount("device.mount", mount)

    def _read(self) -> str | None:
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "surrogateescape")
        except OSError:
            log.exception("cannot read %s", self._path)
            return None

    def _run(self) -> None:
        # The timer also catches a mount seen before udev had described its device.
        poller = select.poll()
        poller.register(self._fd, select.POLLPRI | select.POLLERR)
        self._stop.register(poller)
        while True:
            ready = poller.poll(self._poll_ms)
            if self._stop.rang(ready):
                return
            try:
                self.recheck(timer=not ready)
            except Exception:  # retried at the next change or poll; meanwhile mounts may go unseen
                log.exception("mount table check failed")
                self.failed()

    def _emit_mount(self, action: str, mount: RemovableMount) -> None:
        event = new_event(action)
        event.device.CopyFrom(mount.device)
        event.exfilguard.mount.CopyFrom(mount.mount)
        event.file.path = fs_text(mount.point)
        event.exfilguard.attribution = procinfo.NONE
        self._emit(event)
