"""DeviceWriters: who opened a removable block device's node for writing (root only).

A raw write (`dd if=db.tgz of=/dev/sdb`) makes no file event; the device's write counter
(devices.py) moves only when the page cache reaches the device, after dd has exited, so
/proc no longer names it. fanotify in fd mode reports only regular files and directories;
this is a small group of its own in FID mode (events name the object by file handle) with
an inode mark on each removable device node: an open names the process while it lives,
a close-after-write says it wrote.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import struct
import threading
import time

from agent.background import Background
from agent.sensors import procinfo
from agent.sensors.errors import FanotifyUnavailable
from agent.sensors.fanotify import (
    AT_FDCWD,
    FAN_CLASS_NOTIF,
    FAN_CLOEXEC,
    FAN_CLOSE_WRITE,
    FAN_MARK_ADD,
    FAN_NONBLOCK,
    FAN_OPEN,
    _libc,
)
from agent.sensors.stoppipe import StopPipe

log = logging.getLogger(__name__)

FAN_REPORT_FID = 0x200
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_FID_INFO = 1  # FAN_EVENT_INFO_TYPE_FID: header, fsid, struct file_handle
_HANDLE_MAX = 128
_OPENERS = 256  # processes remembered between their open and their close, oldest out
WRITER_SECONDS = 300.0  # a raw write's last writer is named this long after its close


class DeviceWriters:
    """The last process that wrote to each watched device node, from its own fanotify group."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                                 ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_FID
        fd = self._libc.fanotify_init(flags, os.O_RDONLY)
        if fd < 0:
            raise FanotifyUnavailable("fanotify_init", ctypes.get_errno())
        self._fd = fd
        self._nodes: dict[bytes, str] = {}  # file handle -> device node
        self._openers: dict[int, procinfo.ProcessInfo | None] = {}
        self._writers: dict[str, tuple[float, int, procinfo.ProcessInfo | None]] = {}
        self._lock = threading.Lock()
        self._me = os.getpid()
        self._stop = StopPipe()
        self._reader = Background("device-writers", self._run)

    def start(self) -> None:
        """Read events on a thread of its own."""
        self._reader.start()

    def stop(self) -> None:
        """Stop reading and release the group; idempotent."""
        self._stop.wake(self._reader)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._stop.close()

    def watch(self, node: str) -> None:
        """Watch opens of a removable device's node (its mark goes with the node)."""
        key = self._handle(node)
        if key is None:
            return
        if self._libc.fanotify_mark(self._fd, FAN_MARK_ADD, FAN_OPEN | FAN_CLOSE_WRITE, AT_FDCWD,
                                    os.fsencode(node)) < 0:
            log.warning("cannot watch writes to %s: %s", node, os.strerror(ctypes.get_errno()))
            return
        with self._lock:
            self._nodes[key] = node

    def forget(self, node: str) -> None:
        """The device went: its node's events are no longer wanted."""
        with self._lock:
            self._nodes = {k: n for k, n in self._nodes.items() if n != node}
            self._writers.pop(node, None)

    def writer(self, node: str, within: float = WRITER_SECONDS) -> procinfo.ProcessInfo | None:
        """The process that last closed `node` after writing, within `within` seconds."""
        with self._lock:
            found = self._writers.get(node)
        if found is None or time.monotonic() - found[0] > within:
            return None
        return found[2] or procinfo.ProcessInfo(pid=found[1])

    def _handle(self, node: str) -> bytes | None:
        buf = ctypes.create_string_buffer(8 + _HANDLE_MAX)
        struct.pack_into("=I", buf, 0, _HANDLE_MAX)
        mount_id = ctypes.c_int()
        if self._libc.name_to_handle_at(AT_FDCWD, os.fsencode(node), buf, ctypes.byref(mount_id), 0) < 0:
            log.debug("no file handle for %s: %s", node, os.strerror(ctypes.get_errno()))
            return None
        size = struct.unpack_from("=I", buf, 0)[0]
        return bytes(buf.raw[4 : 8 + size])  # handle type and handle, as events carry them

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        self._stop.register(poller)
        while True:
            ready = poller.poll()
            if self._stop.rang(ready):
                return
            try:
                self._drain()
            except Exception:  # a sensor thread must not die on one bad event
                log.exception("device write event handling failed")

    def _drain(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 16 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset + _METADATA.size <= len(buf):
                event_len, _vers, _res, meta_len, mask, fd, pid = _METADATA.unpack_from(buf, offset)
                if event_len < _METADATA.size:
                    return
                if fd >= 0:
                    os.close(fd)  # not expected in FID mode
                key = _fid(buf[offset + meta_len : offset + event_len])
                if pid != self._me:
                    self._seen(mask, pid, key)
                offset += event_len

    def _seen(self, mask: int, pid: int, key: bytes | None) -> None:
        with self._lock:
            node = self._nodes.get(key) if key is not None else None
        if node is None:
            return
        if mask & FAN_OPEN:  # the process, while it lives: it may be gone at its close
            info = procinfo.read_proc(pid)
            with self._lock:
                self._openers[pid] = info
                if len(self._openers) > _OPENERS:
                    del self._openers[next(iter(self._openers))]
        if mask & FAN_CLOSE_WRITE:
            with self._lock:
                info = self._openers.pop(pid, None)
            if info is None:
                info = procinfo.read_proc(pid)
            with self._lock:
                self._writers[node] = (time.monotonic(), pid, info)


def _fid(info: bytes) -> bytes | None:
    """The file handle (type and bytes) of an event's FID information record."""
    if len(info) < 20 or info[0] != _FID_INFO:
        return None
    size = struct.unpack_from("=I", info, 12)[0]
    return bytes(info[16 : 20 + size])


def device_writers() -> DeviceWriters | None:
    """A DeviceWriters group, or None where the kernel or privileges allow no FID group."""
    with contextlib.suppress(FanotifyUnavailable, AttributeError):
        return DeviceWriters()
    return None
