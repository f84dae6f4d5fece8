"""DeviceSensor: removable block devices appearing and going, from udev (pyudev).

A real stick announces its disk and partitions with `add`; a loop device that gets a
backing file announces it with `change` (and loses it with `change`, size 0). Both are
handled: a removable device with a size is attached once, until `remove` or size 0.
Devices present when the agent starts are reported too.

Raw writes: the kernel sends no fsnotify events for device nodes, so `dd of=/dev/sdb`
is caught from the device's write counter (sysfs `stat`), polled each second while a
removable device is attached and has no file system mounted: `device.write`, with the
process that holds the node open for writing when it is still there. Once the counter has
held still for `_RAW_SETTLE_SECONDS`, the start of the device is read back and identified
(agent/content: an archive stream, chunks of tagged files): a match is a `file.copy` whose
`file.path` is the device node. The volume threshold of the shipped policy stays for what
cannot be identified.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyudev

from agent.background import Background
from agent.content.examiner import Examiner
from agent.content.identify import Identification
from agent.sensors import Emit, procinfo, provenance, seat
from agent.sensors.errors import SensorError
from agent.sensors.failures import FailedEvents
from agent.sensors.media import RemovableMedia, describe_udev
from agent.sensors.provenance import Provenance
from agent.sensors.stoppipe import StopPipe
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, fs_texts, new_event

log = logging.getLogger(__name__)

_RAW_POLL_MS = 1000
_RAW_SETTLE_SECONDS = 1.0
# A file system's last writes (journal, superblock) reach the device after its mount has left
# the mount table: movement this soon after an unmount with no process writing the node is
# that flush, not a raw write
_UNMOUNT_FLUSH_SECONDS = 2.0
_READ_BACK_MARGIN = 1 << 20        # read back this much past the bytes written
_READ_BACK_MAX = 4 << 30
# the page cache reaches the device up to this long after the write (vm.dirty_expire_centisecs)
_WRITEBACK_SECONDS = 30.0

# (writer pid, bytes written, wall time the write was first seen) -> what tagged data reached it
RawLineage = Callable[[int, int, float], Provenance | None]
# (paths content was found in, their tags) -> (the tagged files behind them, their tags, whether any
# was a tagged file itself)
Originals = Callable[[list[str], list[str]], tuple[list[str], list[str], bool]]


@dataclass
class _RawWrite:
    """Raw writes to one device not yet read back."""

    bytes: int
    changed_at: float
    writer: procinfo.ProcessInfo | None
    attribution: str = procinfo.NONE
    started: float = field(default_factory=time.time)  # wall clock, when first seen


def _sectors_written(node: str) -> int | None:
    """Sectors written to a block device since boot (sysfs stat, field 7)."""
    try:
        fields = Path("/sys/class/block", Path(node).name, "stat").read_text().split()
        return int(fields[6])
    except (OSError, ValueError, IndexError):
        return None


def _writer_of(node: str) -> procinfo.ProcessInfo | None:
    """A process holding the device node open for writing, if one still does (os calls over
    /proc: Path objects for every descriptor of every process cost ~300 ms a look)."""
    me = os.getpid()
    for name in os.listdir("/proc"):  # noqa: PTH208 - once per process on the machine
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        for fd, target in procinfo.fd_links(pid) or ():
            if target == node:
                flags = procinfo.fd_flags(pid, fd)
                if flags is not None and flags & (os.O_WRONLY | os.O_RDWR):
                    return procinfo.read_proc(pid)
    return None


class DeviceSensor:
    """Reports `device.attach` / `device.detach` for removable block devices."""

    name = "devices"

    def __init__(self, media: RemovableMedia, emit: Emit,
                 on_attach: Callable[[pb.Device], None] | None = None,
                 on_detach: Callable[[pb.Device], None] | None = None,
                 examiner: Examiner | None = None, *, sessions: str = seat.RUN,
                 last_writer: Callable[[str], procinfo.ProcessInfo | None] | None = None,
                 lineage: RawLineage | None = None, originals: Originals | None = None) -> None:
        self.media = media
        self._last_writer = last_writer  # who fanotify saw write to a device node (root only)
        self._lineage = lineage  # what tagged data reached the writer, when the bytes say nothing
        self._originals = originals  # the tagged files behind derived ones
        self._sessions = sessions  # where logind keeps its seats and sessions (agent/sensors/seat.py)
        self._examiner = examiner
        self._raw: dict[str, _RawWrite] = {}  # device node -> writes to read back
        self._emit = emit
        self.failed = FailedEvents(emit, "udev")  # handling that raised: in an agent.gap
        self._on_attach = on_attach
        self._on_detach = on_detach
        self._attached: dict[str, pb.Device] = {}
        self._lock = threading.Lock()
        self._background = Background("devices", self._run)
        self._stop = StopPipe()
        self._context: Any = None
        self._monitor: Any = None
        self._written: dict[str, int] = {}  # device node -> sectors written, last look
        self._unmounted: dict[str, float] = {}  # device node -> when a file system on it went

    def start(self) -> None:
        """Open the udev monitor, report what is present, then follow changes."""
        try:
            self._context = pyudev.Context()
            self._monitor = pyudev.Monitor.from_netlink(self._context)
            self._monitor.filter_by("block")
            self._monitor.start()
        except (OSError, ValueError) as exc:
            raise SensorError(f"udev monitor unavailable: {exc}") from exc
        for device in self._context.list_devices(subsystem="block"):
            self._seen(device, "present")
        self._background.start()

    def stop(self) -> None:
        """Stop following udev; idempotent."""
        self._stop.wake(self._background)
        self._stop.close()
        self._monitor = None  # pyudev closes its netlink socket when the monitor goes
        self.failed.flush()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._monitor.fileno(), select.POLLIN)
        self._stop.register(poller)
        while True:
            with self._lock:
                watching = bool(self._attached)
            ready = poller.poll(_RAW_POLL_MS if watching else None)
            if self._stop.rang(ready):
                return
            try:
                self._check_raw_writes()
            except Exception:
                log.exception("raw write check failed")
            while True:
                try:
                    device = self._monitor.poll(timeout=0)
                except (OSError, ValueError):
                    log.exception("udev monitor read failed")
                    break
                if device is None:
                    break
                try:
                    self._seen(device, device.action or "change")
                except Exception:
                    log.exception("udev event handling failed")
                    self.failed()

    def _seen(self, device: Any, action: str) -> None:
        node = device.device_node
        if not node:
            return
        if action == "remove":
            self._detach(node)
            self.media.drop_device(node)
            return
        described = describe_udev(device, self.media.policy)
        if described.size == 0:
            # A loop device without a backing file, or an empty card reader: nothing there.
            self._detach(node)
            self.media.drop_device(node)
            return
        self.media.put_device(described)
        if not described.removable:
            return
        with self._lock:
            known = self._attached.get(node)
            if known is not None and known.serial == described.serial and known.size == described.size:
                return
            self._attached[node] = described
        # the write counter's baseline is taken now, not at the next poll: a `dd` started the
        # moment the stick appears must count from here
        sectors = _sectors_written(node)
        if sectors is not None:
            self._written[node] = sectors
        if known is not None:
            self._emit_device("device.detach", known, "replaced by another medium")
        self._emit_device("device.attach", described, "present at agent start" if action == "present" else "")
        if self._on_attach is not None:
            self._on_attach(described)

    def _check_raw_writes(self) -> None:
        mounts = self.media.mounts()
        mounted = {m.device.name for m in mounts} | {m.device.parent for m in mounts}
        with self._lock:
            devices = list(self._attached.values())
        now = time.monotonic()
        for device in devices:
            sectors = _sectors_written(device.name)
            if sectors is None:
                continue
            before = self._written.get(device.name)
            self._written[device.name] = sectors
            if before is None or sectors <= before or device.name in mounted or (
                    device.parent and device.parent in mounted):
                self._read_back_if_settled(device, now)
                continue  # writes through a mounted file system are file events, not raw ones
            writer, how = self._writer(device.name)
            if writer is None and self._flushing(device, now):
                continue  # the unmount's own flush (re-baselined above)
            event = new_event("device.write")
            event.device.CopyFrom(device)
            event.exfilguard.count = (sectors - before) * 512
            event.event.reason = (f"{(sectors - before) * 512} bytes written to the raw device "
                                  "with no file system mounted")
            procinfo.describe(event, writer, how)
            self._emit(event)
            pending = self._raw.get(device.name)
            if pending is None:
                self._raw[device.name] = _RawWrite((sectors - before) * 512, now, writer, how)
            else:
                pending.bytes += (sectors - before) * 512
                pending.changed_at = now
                if pending.writer is None:
                    pending.writer, pending.attribution = writer, how

    def _writer(self, node: str) -> tuple[procinfo.ProcessInfo | None, str]:
        """Who wrote to the raw device: a process holding it open for writing now, else the
        one fanotify saw close it after writing (dd has exited by the time the page cache
        reaches the device), and how sure that is."""
        writer = _writer_of(node)
        if writer is not None:
            return writer, procinfo.INFERRED
        writer = self._last_writer(node) if self._last_writer is not None else None
        return writer, procinfo.EXACT if writer is not None else procinfo.NONE

    def _read_back_if_settled(self, device: pb.Device, now: float) -> None:
        """Identify what was written once the device's write counter held still."""
        pending = self._raw.get(device.name)
        if pending is None or now - pending.changed_at < _RAW_SETTLE_SECONDS:
            return
        del self._raw[device.name]
        if self._examiner is None:
            return
        limit = min(pending.bytes + _READ_BACK_MARGIN, _READ_BACK_MAX, device.size or _READ_BACK_MAX)
        self._examiner.examine_device(
            device.name, limit, lambda found: self._raw_identified(device, pending, found))

    def _raw_identified(self, device: pb.Device, pending: _RawWrite, found: Identification) -> None:
        if found.refused:
            log.info("reading back %s: %s", device.name, found.refused)
        if not found.found:
            self._raw_by_lineage(device, pending, found)
            return
        # found in files derived from tagged data (an archive staged in /tmp): named by the
        # tagged files they came from
        sources, tags = found.sources, found.tags
        if self._originals is not None:
            sources, tags, _original = self._originals(sources, tags)
        event = new_event("file.copy", tags=tags,
                          file=pb.File(path=device.name, size=pending.bytes, type="device"))
        event.device.CopyFrom(device)
        event.exfilguard.source.path = fs_text(sources[0])
        event.exfilguard.source.tags.extend(tags)
        event.exfilguard.copy.method.append("fingerprint")
        found.fill(event)
        del event.exfilguard.copy.sources[:]
        event.exfilguard.copy.sources.extend(fs_texts(sources[: provenance.MAX_SOURCES]))
        event.event.reason = (f"{pending.bytes} bytes written to the raw device; read back: "
                              f"{found.format or 'data'} holding {len(found.sources)} tagged file(s)")
        procinfo.describe(event, pending.writer, pending.attribution)
        self._emit(event)

    def _raw_by_lineage(self, device: pb.Device, pending: _RawWrite, found: Identification) -> None:
        """Nothing tagged read back (an encrypted archive): the writer's lineage may still tie
        the bytes to tagged data (dd of an archive staged and encrypted in /tmp)."""
        if self._lineage is None or pending.writer is None or not pending.writer.pid:
            return
        ident = self._lineage(pending.writer.pid, pending.bytes, pending.started - _WRITEBACK_SECONDS)
        if ident is None or not ident.evidence:
            return
        event = new_event("file.copy", tags=ident.tags,
                          file=pb.File(path=device.name, size=pending.bytes, type="device"))
        event.device.CopyFrom(device)
        event.exfilguard.source.path = fs_text(ident.source)
        event.exfilguard.source.tags.extend(ident.sources[0].tags if ident.sources else ident.tags)
        event.exfilguard.copy.method.append("process")
        provenance.describe(event.exfilguard.copy, ident)
        event.exfilguard.content.entropy = found.entropy
        event.event.reason = (f"{pending.bytes} bytes written to the raw device by a process that read "
                              f"{ident.files} tagged file(s) while writing; read back: nothing recognised")
        procinfo.describe(event, pending.writer, pending.attribution)
        self._emit(event)

    def forget_writes(self, node: str, disk: str = "") -> None:
        """Re-baseline the write counter (a file system on it, a partition of `disk` if
        named, was just unmounted)."""
        for went in (node, disk):
            if went:
                self._unmounted[went] = time.monotonic()
        sectors = _sectors_written(node)
        if sectors is not None:
            self._written[node] = sectors

    def _flushing(self, device: pb.Device, now: float) -> bool:
        """Whether `device` (or the disk it is part of) lost a file system moments ago."""
        went = max(self._unmounted.get(device.name, -1e9),
                   self._unmounted.get(device.parent, -1e9) if device.parent else -1e9)
        return now - went < _UNMOUNT_FLUSH_SECONDS

    def _detach(self, node: str) -> None:
        with self._lock:
            known = self._attached.pop(node, None)
        self._unmounted.pop(node, None)
        if known is not None:
            self._emit_device("device.detach", known, "")
            if self._on_detach is not None:
                self._on_detach(known)

    def _emit_device(self, action: str, device: pb.Device, reason: str) -> None:
        event = new_event(action)
        event.device.CopyFrom(device)
        if reason:
            event.event.reason = reason
        event.exfilguard.attribution = procinfo.NONE
        at_seat = seat.seat_user(self._sessions)  # no process plugs a stick in: the seat's user did
        if at_seat is not None:
            event.user.id, event.user.name = str(at_seat[0]), at_seat[1]
        self._emit(event)
