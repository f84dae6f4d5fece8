"""Sensors: each owns one OS resource and turns what it sees into events.

A sensor is built with the agent config and an `emit` callback, and has `start()`
and `stop()`. The agent's main module builds the list; nothing else wires sensors.
`emit` is thread-safe and never blocks for long (it appends to the spool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from protos import exfilguard_pb2 as pb

if TYPE_CHECKING:
    from agent.config import AgentConfig

Emit = Callable[[pb.Event], None]


class Sensor(Protocol):
    """What the agent's main needs of a sensor."""

    name: str

    def start(self) -> None:
        """Begin watching; returns once the sensor is running in its own thread(s)."""

    def stop(self) -> None:
        """Stop watching and release OS resources; idempotent."""


def build_sensors(config: AgentConfig, emit: Emit) -> list[Sensor]:
    """Every sensor the config asks for, wired together, in start order (stop in reverse).

    fanotify is used when `sensors.fanotify` is `on`, or `auto` and we are root and the
    kernel allows it; otherwise inotify with best-effort attribution.
    Raises FanotifyUnavailable when `on` and fanotify cannot be used.
    """
    from agent.content import ContentCatalog, ContentIdentifier
    from agent.content.examiner import Examiner
    from agent.sensors import fanotify
    from agent.sensors.access import AccessReporter, ExactAccessSensor
    from agent.sensors.copies import CopyDetector
    from agent.sensors.devices import DeviceSensor
    from agent.sensors.files import FileSensor
    from agent.sensors.fingerprints import FingerprintIndex
    from agent.sensors.inventory import InventorySensor
    from agent.sensors.media import RemovableMedia
    from agent.sensors.mounts import MountTable
    from agent.sensors.staging import StagingDetector
    from agent.sensors.tags import TagMap

    settings = config.sensors
    tags = TagMap(config.tags)
    media = RemovableMedia(config.removable)
    index = FingerprintIndex(tags, settings.max_hash_bytes)
    staging = StagingDetector(settings, emit, on_archive=index.add_staged)

    def content_lost(reason: str, count: int) -> None:
        emit(_content_gap(reason, count))

    catalog = ContentCatalog(index, max_chunks=settings.max_chunk_fingerprints,
                             max_file_bytes=settings.max_hash_bytes, on_loss=content_lost)
    examiner = Examiner(ContentIdentifier(catalog, index), on_loss=content_lost)
    copies = CopyDetector(index, media, staging, emit, examiner=examiner)

    exact: ExactAccessSensor | None = None
    if settings.fanotify == "on" or (settings.fanotify == "auto" and fanotify.available()):
        reporter = AccessReporter(tags, index, copies, staging, emit, media=media)
        exact = ExactAccessSensor(tags, reporter, media)
    files = FileSensor(
        tags, index, copies, staging, media, emit,
        exact=exact is not None,
        on_new_dir=exact.mark_dir if exact is not None else None,
        on_rescan=exact.mark_tagged if exact is not None else None,
        on_new_root=exact.mark_root if exact is not None else None,
        recheck_seconds=settings.inventory_seconds,
    )
    # a mount or unmount may make a tagged path appear or go (a share mounted after start)
    mounts = MountTable(media, emit, settings.mount_poll_seconds, on_change=files.recheck_soon)

    def attached(_device: pb.Device) -> None:
        mounts.recheck()  # a mount seen before udev described its device

    devices = DeviceSensor(media, emit, on_attach=attached, examiner=examiner)
    # after an unmount the device's write counter moved (the unmount flushed): not a raw write
    media.subscribe(lambda mount, appeared: None if appeared else devices.forget_writes(mount.device.name))
    inventory = InventorySensor(index, emit, settings.inventory_seconds)
    # files first: it builds the index the inventory reports; fanotify before mounts so that
    # removable mounts present at start get their marks as the mount table reports them.
    # the catalog fingerprints what the file sensor indexed; the examiner answers copies
    sensors: list[Sensor] = [files, catalog, examiner]
    if exact is not None:
        sensors.append(exact)
    sensors += [inventory, devices, mounts]
    return sensors


_LOSS_TEXT = {
    "content_index_full": "content catalog full: later tagged files are matched by exact hash only",
    "content_queue_full": "content examination queue full: a copy was reported without content evidence",
}


def _content_gap(reason: str, count: int) -> pb.Event:
    from agent.sensors import procinfo
    from protos.events import new_event

    event = new_event("agent.gap")
    event.exfilguard.gap.lost = count
    event.exfilguard.gap.reason = reason
    event.event.reason = _LOSS_TEXT.get(reason, reason)
    event.exfilguard.attribution = procinfo.NONE
    return event
