"""DeviceGuard: removable storage not on prevent.allowed_devices, made read-only or refused.

Called by the device sensor on the udev thread the moment udev reports a removable block
device (a stick's disk and each partition; a loop stick's `change`), so it acts before a
mount that follows udev's event (a desktop automounter reacting to the same event may race
it: docs/prevention.md).

  read-only  BLKROSET on the device node: the kernel refuses writes to it, so a mount
             comes up read-only (util-linux falls back to `ro`) and every write fails EROFS.
             `device.readonly`.
  block      read-only as above, and the node held open exclusively (O_EXCL), so no file
             system can be mounted from it (EBUSY) while the agent runs; on a real USB
             device the port is also de-authorized (sysfs `authorized` = 0, as USBGuard does),
             and the device disappears. `device.block`.

Held nodes are released, and the read-only flag cleared, when the device goes and when the
guard stops (a loop device keeps its flag after its image is detached, and the next image
attached to it would inherit it). An agent killed with SIGKILL leaves the flag set.
"""

# ruff: noqa: PTH123

from __future__ import annotations

import contextlib
import errno as errno_mod
import fcntl
import logging
import os
import struct
import threading
from pathlib import Path

from agent.prevent.notify import tell_user
from agent.sensors import Emit, procinfo
from common.agentconfig import PreventSettings, allowed_device_entry
from protos import exfilguard_pb2 as pb
from protos.events import new_event

log = logging.getLogger(__name__)

BLKROSET = 0x125D  # _IO(0x12, 93)
BLKROGET = 0x125E  # _IO(0x12, 94)


def set_read_only(node: str, read_only: bool = True) -> None:
    """Mark a block device read-only (or read-write again) in the kernel (BLKROSET). Raises OSError."""
    fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, BLKROSET, struct.pack("i", int(read_only)))
    finally:
        os.close(fd)


def is_read_only(node: str) -> bool:
    """Whether the kernel holds a block device read-only (BLKROGET). Raises OSError."""
    fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        out = fcntl.ioctl(fd, BLKROGET, struct.pack("i", 0))
    finally:
        os.close(fd)
    return bool(struct.unpack("i", out)[0])


def _usb_port(node: str) -> Path | None:
    """The sysfs directory of the USB device behind a block device (it has `authorized`), if any."""
    path = (Path("/sys/class/block") / Path(node).name).resolve()
    while path.is_relative_to("/sys/devices") and path != Path("/sys/devices"):
        if (path / "authorized").exists() and (path / "idVendor").exists():
            return path
        path = path.parent
    return None


def _mounted(node: str) -> bool:
    """Whether a file system from this device node is mounted now (any namespace we see)."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            text = fh.read()
    except OSError:
        return False
    want = os.fsencode(node)
    return any(line.split(b" - ", 1)[-1].split()[1:2] == [want] for line in text.splitlines())


class DeviceGuard:
    """Applies prevent.devices to removable block devices as the device sensor reports them."""

    name = "device-guard"

    def __init__(self, settings: PreventSettings, emit: Emit) -> None:
        self.mode = settings.devices
        self._emit = emit
        self._allowed = [allowed_device_entry(entry) for entry in settings.allowed_devices]
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # device node -> exclusive fd (block mode)
        self._read_only: set[str] = set()  # device nodes this guard set read-only

    def allowed(self, device: pb.Device) -> bool:
        """Whether `allowed_devices` names this device (by serial, model ids, or both)."""
        vendor, product = device.vendor_id.lower(), device.product_id.lower()
        for want_vendor, want_product, want_serial in self._allowed:
            if want_vendor and (want_vendor, want_product) != (vendor, product):
                continue
            if want_serial and want_serial != device.serial:
                continue
            return True
        return False

    def start(self) -> None:
        """Nothing to start: the device sensor calls `attached`/`detached`."""

    def stop(self) -> None:
        """Release held devices and make read-write again those it made read-only; idempotent.

        A loop device keeps its flag after its file is detached, and the next image attached to
        it would inherit it: the flag goes with the guard that set it.
        """
        with self._lock:
            held, self._held = self._held, {}
            read_only, self._read_only = self._read_only, set()
        for fd in held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        for node in read_only:
            with contextlib.suppress(OSError):
                set_read_only(node, False)

    def attached(self, device: pb.Device) -> None:
        """A removable block device appeared (udev thread): leave it, make it read-only, or refuse it."""
        if self.mode == "monitor" or not device.removable or self.allowed(device):
            return
        steps: list[str] = []
        try:
            set_read_only(device.name)
            with self._lock:
                self._read_only.add(device.name)
            steps.append("set read-only at the block layer (BLKROSET)")
        except OSError as exc:
            self._failed(device, f"BLKROSET failed: {os.strerror(exc.errno or 0)}")
            if self.mode != "block":
                return
        if self.mode == "block":
            steps += self._refuse(device)
        if _mounted(device.name):
            steps.append("already mounted before the agent saw it: takes effect at its next mount")
        action = "device.block" if self.mode == "block" else "device.readonly"
        event = new_event(action)
        event.device.CopyFrom(device)
        event.event.reason = (f"not on prevent.allowed_devices (serial {device.serial or '?'}, "
                              f"{device.vendor_id or '?'}:{device.product_id or '?'}): " + "; ".join(steps))
        event.exfilguard.attribution = procinfo.NONE
        self._emit(event)
        tell_user(-1, f"ExfilGuard: {action}",
                  f"{device.name} {device.vendor} {device.model}: {event.event.reason}")

    def _refuse(self, device: pb.Device) -> list[str]:
        steps = []
        try:
            fd = os.open(device.name, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            why = "in use (mounted before the agent saw it)" if exc.errno == errno_mod.EBUSY else os.strerror(
                exc.errno or 0)
            steps.append(f"cannot hold it: {why}")
        else:
            with self._lock:
                old = self._held.pop(device.name, None)
                self._held[device.name] = fd
            if old is not None:
                os.close(old)
            steps.append("held exclusively: it cannot be mounted")
        port = _usb_port(device.name)
        if port is not None:
            try:
                (port / "authorized").write_text("0")
                steps.append(f"USB device de-authorized ({port.name})")
            except OSError as exc:
                steps.append(f"USB de-authorization failed: {os.strerror(exc.errno or 0)}")
        return steps

    def detached(self, device: pb.Device) -> None:
        """The device went away: release its hold, and clear the flag (a loop device is reused)."""
        with self._lock:
            fd = self._held.pop(device.name, None)
            was_read_only = device.name in self._read_only
            self._read_only.discard(device.name)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if was_read_only:
            with contextlib.suppress(OSError):
                set_read_only(device.name, False)

    def _failed(self, device: pb.Device, what: str) -> None:
        log.error("prevent.devices %s on %s: %s", self.mode, device.name, what)
