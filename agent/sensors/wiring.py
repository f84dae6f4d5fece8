"""The wiring: every sensor the agent config asks for, fed into each other, in start order."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

from agent.content import ContentCatalog, ContentIdentifier, saved
from agent.content.examiner import Examiner
from agent.prevent import grants
from agent.prevent.devices import DeviceGuard
from agent.prevent.guard import ContentGuard
from agent.prevent.quarantine import Quarantine
from agent.sensors import Emit, Sensor, fanotify, procinfo, provenance
from agent.sensors.access import AccessReporter, ExactAccessSensor
from agent.sensors.copies import CopyDetector
from agent.sensors.devices import DeviceSensor
from agent.sensors.files import FileSensor
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.inventory import InventorySensor
from agent.sensors.late import LateExaminer
from agent.sensors.lineage import DataFlow
from agent.sensors.media import RemovableMedia
from agent.sensors.mounts import MountTable
from agent.sensors.staging import StagingDetector
from agent.sensors.tags import TagMap
from common.agentconfig import AgentConfig
from protos import exfilguard_pb2 as pb
from protos.events import new_event


def build_sensors(config: AgentConfig, emit: Emit) -> list[Sensor]:
    """Every sensor the config asks for, wired together, in start order (stop in reverse).

    fanotify is used when `sensors.fanotify` is `on`, or `auto` and we are root and the
    kernel allows it; otherwise inotify with best-effort attribution.
    Raises FanotifyUnavailable when `on` and fanotify cannot be used.
    """
    settings = config.sensors
    tags = TagMap(config.tags)
    media = RemovableMedia(config.removable)
    index = FingerprintIndex(tags, settings.max_hash_bytes)
    staging = StagingDetector(settings, emit)

    def content_lost(reason: str, count: int) -> None:
        emit(_content_gap(reason, count))

    # saved in the state directory (made by the agent before its sensors), so a restart does not
    # read every tagged file again; a config whose state directory does not exist saves nothing
    state = Path(config.state_dir)
    saved_path = str(state / saved.FILE_NAME) if state.is_dir() else ""
    catalog = ContentCatalog(index, max_chunks=settings.max_chunk_fingerprints,
                             max_file_bytes=settings.max_hash_bytes, on_loss=content_lost,
                             saved_path=saved_path)
    examiner = Examiner(ContentIdentifier(catalog, index), on_loss=content_lost)
    blocking = config.prevent.removable_writes == "block"
    # only exceptions the collector signed for this host (agent/prevent/grants.py)
    prevent = grants.honoured(config.prevent, config.state_dir, emit) if blocking else config.prevent
    quarantine = Quarantine(config.state_dir, media, emit, prevent.exceptions) if blocking else None

    def copy_emit(event: pb.Event) -> None:
        emit(event)
        if quarantine is not None:
            quarantine.consider(event)  # tagged data that got past the guard is moved off the stick

    copies = CopyDetector(index, media, staging, copy_emit, examiner=examiner, flow=DataFlow())

    exact: ExactAccessSensor | None = None
    if settings.fanotify == "on" or (settings.fanotify == "auto" and fanotify.available()):
        reporter = AccessReporter(tags, index, copies, staging, emit, media=media)
        exact = ExactAccessSensor(tags, reporter, media, max_file_marks=settings.max_file_marks)
    index.own_reads_asked = exact is None  # inotify reports opens and closes only without fanotify
    if exact is not None:
        reader = exact.fanotify
        catalog.activity = lambda: reader.woke_at  # fingerprinting waits out a burst of accesses
    content_guard = (ContentGuard(prevent, tags, index, media, emit, flow=copies.flow)
                     if blocking else None)
    if quarantine is not None and content_guard is not None:
        quarantine.spared = content_guard.decider.spared  # allowed users' copies stay on the stick
    if exact is not None and content_guard is not None:
        exact.also_mark.append(content_guard.mark_dir)  # also when fanotify sees the directory first
    markers = [exact.mark_dir] if exact is not None else [content_guard.mark_dir] if content_guard else []

    def new_dir(path: str) -> None:
        for mark in markers:  # tagged opens there are heard (and asked, while armed) by the guard too
            mark(path)

    files = FileSensor(
        tags, index, copies, staging, media, emit,
        exact=exact is not None,
        on_new_dir=new_dir if markers else None,
        on_rescan=exact.mark_tagged if exact is not None else None,
        on_new_root=exact.mark_root if exact is not None else None,
        on_new_file=exact.mark_file if exact is not None else None,
        recheck_seconds=settings.inventory_seconds,
    )
    def mounts_changed() -> None:
        files.recheck_soon()  # a mount or unmount may make a tagged path appear or go (a share)
        if exact is not None:
            exact.mark_memory_file_systems()  # a user's /run/user/UID, mounted at login

    mounts = MountTable(media, emit, settings.mount_poll_seconds, on_change=mounts_changed,
                        tagged=list(config.tags))

    guard = DeviceGuard(config.prevent, emit)

    def attached(device: pb.Device) -> None:
        guard.attached(device)  # first: before anything mounts it
        if exact is not None:
            exact.device_attached(device)  # who opens its node for writing (a raw dd)
        mounts.recheck()  # a mount seen before udev described its device

    def detached(device: pb.Device) -> None:
        guard.detached(device)
        if exact is not None:
            exact.device_detached(device)

    def raw_lineage(pid: int, size: int, since: float) -> provenance.Provenance | None:
        return provenance.by_lineage(copies.flow.flow([pid]), size, since)

    devices = DeviceSensor(media, emit, on_attach=attached, on_detach=detached, examiner=examiner,
                           last_writer=exact.device_writer if exact is not None else None,
                           lineage=raw_lineage, originals=copies.originals)
    # after an unmount the device's write counter moved (the unmount flushed): not a raw write
    media.subscribe(lambda mount, appeared: None if appeared else
                    devices.forget_writes(mount.device.name, mount.device.parent))
    inventory = InventorySensor(index, emit, settings.inventory_seconds)
    # files first: it builds the index the inventory reports; fanotify before mounts so that
    # removable mounts present at start get their marks as the mount table reports them.
    # the catalog fingerprints what the file sensor indexed; the examiner answers copies
    sensors: list[Sensor] = [files, catalog, examiner, copies.second_look]
    if exact is not None:
        sensors.append(exact)
    if quarantine is not None and content_guard is not None:  # before the mount table: the guard
        sensors += [quarantine, content_guard]                   # marks mounts as they come
    # before the mount table: the mounts it reports at start are examined for late writes
    late = LateExaminer(config.state_dir, media, copies)
    sensors += [inventory, guard, devices, late, mounts]
    return sensors


_LOSS_TEXT = {
    "content_index_full": "content catalog full: later tagged files are matched by exact hash only",
    "content_queue_full": "content examination queue full: a copy was reported without content evidence",
    "content_unreadable": "a file on removable media could not be read to the end for examination (the "
                          "device was removed or failed): its copy was judged on what was read",
}


def _content_gap(reason: str, count: int) -> pb.Event:
    event = new_event("agent.gap")
    event.exfilguard.gap.lost = count
    event.exfilguard.gap.reason = reason
    event.event.reason = _LOSS_TEXT.get(reason, reason)
    event.exfilguard.attribution = procinfo.NONE
    return event


def take_exceptions(sensors: Sequence[Sensor], config: AgentConfig, emit: Emit) -> None:
    """A push that changed only the grants: the guard and the quarantine take the honoured ones at
    once, without a rebuild (which would leave the sticks unguarded for a moment)."""
    if config.prevent.removable_writes != "block":
        return
    honoured = grants.honoured(config.prevent, config.state_dir, emit).exceptions
    for sensor in sensors:
        if isinstance(sensor, ContentGuard):
            sensor.decider.exceptions = list(honoured)  # one assignment: the decision thread sees old or new
        elif isinstance(sensor, Quarantine):
            sensor.exceptions = list(honoured)


def hold_started() -> None:
    """Once the sensors have started: what they built (the index of every tagged file, the tag
    map, the modules) lives as long as they do, and is moved out of the cyclic garbage
    collector's reach (`gc.freeze`). A full collection in a burst of file events then scans only
    what came after: it was a tenth of the agent's CPU on a burst of 2,000 new files."""
    gc.collect()
    gc.freeze()


def release_started() -> None:
    """Before sensors held by `hold_started` stop: their objects are the collector's again, so a
    rebuild (a pushed config) does not keep the old sensors' cycles for good."""
    gc.unfreeze()
