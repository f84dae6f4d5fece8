"""RemovableMedia: what the device and mount sensors know, shared with the file sensors.

The device sensor fills in block devices from udev; the mount table adds mounts of
removable ones. The file sensors ask `mount_for(path)` whether a written file landed on
removable media, and subscribe to mounts appearing and going (to add and drop watches).
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH119

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyudev

from agent.sensors import procinfo
from common.agentconfig import Removable
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, new_event


@dataclass(frozen=True, slots=True)
class RemovableMount:
    """A mounted file system on a removable device."""

    point: str
    device: pb.Device
    mount: pb.Mount
    seen_at: float = 0.0      # wall-clock time the agent saw it appear (0: present at start)


MountListener = Callable[[RemovableMount, bool], None]  # (mount, appeared)

EGRESS_BUSES = ("network", "mtp")  # device.bus of egress media that are not block devices


def egress_device(kind: str, source: str, fs_type: str) -> pb.Device:
    """The pb.Device of a network share or a phone: no block device, so the share or
    phone as mountinfo names it (`server:/export`, `//host/share`, `user@host:`)."""
    return pb.Device(name=fs_text(source), bus=kind, type=fs_text(fs_type), removable=True)


def unwatched(mount: RemovableMount, why: str) -> pb.Event:
    """`agent.gap` (reason `unwatched_mount`): writes to this removable mount cannot be seen."""
    event = new_event("agent.gap")
    event.exfilguard.gap.reason = "unwatched_mount"
    event.event.reason = f"{mount.device.bus or 'removable'} mount {mount.mount.point} " \
                         f"({mount.mount.source}, {mount.mount.fs_type}) cannot be watched: {why}; " \
                         "writes to it are not seen"
    event.device.CopyFrom(mount.device)
    event.exfilguard.mount.CopyFrom(mount.mount)
    event.file.path = fs_text(mount.point)
    event.exfilguard.attribution = procinfo.NONE
    return event


def _sysfs_attr(sys_path: str, name: str) -> str:
    try:
        return Path(sys_path, name).read_text(errors="replace").strip()
    except OSError:
        return ""


def describe_udev(device: Any, policy: Removable) -> pb.Device:
    """A pb.Device from a pyudev Device: udev properties first, sysfs as fallback."""
    props = device.properties
    devtype = props.get("DEVTYPE", "")
    sys_path = device.sys_path
    # Identity (vendor, model, serial, removable) lives on the whole disk, not the partition.
    disk = device.find_parent("block", "disk") if devtype == "partition" else None
    disk_path = disk.sys_path if disk is not None else sys_path
    kernel = device.sys_name

    def prop(*names: str) -> str:
        for name in names:
            value = props.get(name) or (disk.properties.get(name) if disk is not None else None)
            if value:
                return str(value).strip()
        return ""

    vendor = prop("ID_VENDOR", "ID_VENDOR_FROM_DATABASE") or _sysfs_attr(disk_path, "device/vendor")
    model = prop("ID_MODEL", "ID_MODEL_FROM_DATABASE") or _sysfs_attr(disk_path, "device/model")
    serial = prop("ID_SERIAL_SHORT", "ID_SERIAL") or _sysfs_attr(disk_path, "device/serial")
    # An SD card in a built-in reader is mmcblkN with removable=0 (the kernel sets it only for
    # removable media in a permanent device) and no ID_BUS; the card's type tells it from eMMC.
    sd_card = kernel.startswith("mmcblk") and _sysfs_attr(disk_path, "device/type") == "SD"
    bus = prop("ID_BUS") or next((b for b in ("loop", "mmc") if kernel.startswith(b)), "")
    sectors = _sysfs_attr(sys_path, "size")
    out = pb.Device(
        name=str(device.device_node or f"/dev/{kernel}"),
        serial=serial,
        vendor=vendor.replace("_", " "),
        model=model.replace("_", " "),
        vendor_id=prop("ID_VENDOR_ID"),
        product_id=prop("ID_MODEL_ID"),
        bus=bus,
        size=int(sectors) * 512 if sectors.isdigit() else 0,
        type=devtype,
        parent=str(disk.device_node) if disk is not None and disk.device_node else "",
    )
    parent_name = os.path.basename(out.parent) if out.parent else ""
    out.removable = (
        bus == "usb"
        or sd_card
        or _sysfs_attr(disk_path, "removable") == "1"
        or (policy.include_loop and kernel.startswith("loop"))
        or bool(serial and serial in policy.serials)
        or kernel in policy.devices
        or bool(parent_name and parent_name in policy.devices)
    )
    return out


class RemovableMedia:
    """Known block devices (by device node) and the removable mounts now present."""

    def __init__(self, policy: Removable) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._devices: dict[str, pb.Device] = {}
        self._mounts: dict[str, RemovableMount] = {}
        self._listeners: list[MountListener] = []
        self._context: Any = None

    def put_device(self, device: pb.Device) -> None:
        """Remember what udev told us about a device node."""
        with self._lock:
            self._devices[device.name] = device

    def drop_device(self, node: str) -> pb.Device | None:
        """Forget a device that went away; returns what we knew of it."""
        with self._lock:
            return self._devices.pop(node, None)

    def device(self, node: str) -> pb.Device | None:
        """What we know of a device node, asking udev if the device sensor has not yet."""
        with self._lock:
            known = self._devices.get(node)
        if known is not None:
            return known
        found = self._query_udev(node)
        if found is not None:
            self.put_device(found)
        return found

    def fs_identity(self, node: str) -> tuple[str, str]:
        """File system (label, UUID) of a device node from the udev database."""
        try:
            if self._context is None:
                self._context = pyudev.Context()
            dev = pyudev.Devices.from_device_file(self._context, node)
            return str(dev.properties.get("ID_FS_LABEL", "")), str(dev.properties.get("ID_FS_UUID", ""))
        except (OSError, ValueError, LookupError):
            # not a udev-known device (e.g. a bind mount source): no identity
            return "", ""

    def _query_udev(self, node: str) -> pb.Device | None:
        try:
            if self._context is None:
                self._context = pyudev.Context()
            return describe_udev(pyudev.Devices.from_device_file(self._context, node), self.policy)
        except (OSError, ValueError, LookupError):
            return None

    def subscribe(self, listener: MountListener) -> None:
        """Call `listener(mount, appeared)` for each removable mount from now on."""
        with self._lock:
            self._listeners.append(listener)
            present = list(self._mounts.values())
        for mount in present:
            listener(mount, True)

    def add_mount(self, mount: RemovableMount) -> None:
        """A removable file system was mounted."""
        with self._lock:
            self._mounts[mount.point] = mount
            listeners = list(self._listeners)
        for listener in listeners:
            listener(mount, True)

    def remove_mount(self, point: str) -> RemovableMount | None:
        """A removable file system was unmounted."""
        with self._lock:
            gone = self._mounts.pop(point, None)
            listeners = list(self._listeners)
        if gone is not None:
            for listener in listeners:
                listener(gone, False)
        return gone

    def mounts(self) -> list[RemovableMount]:
        """Removable mounts present now."""
        with self._lock:
            return list(self._mounts.values())

    def mount_for(self, path: str) -> RemovableMount | None:
        """The removable mount holding `path`, if any (the longest matching mount point)."""
        best: RemovableMount | None = None
        with self._lock:
            for point, mount in self._mounts.items():
                if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                    best is None or len(point) > len(best.point)
                ):
                    best = mount
        return best
