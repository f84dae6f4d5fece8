"""A fanotify permission group (FAN_CLASS_CONTENT): opens wait until the agent answers.

A small ctypes binding of its own, apart from the notification group of agent/sensors:
permission events need a group of the content class, and a listener of that class is
asked before the open completes. Each event holds the opener in the kernel until
`answer(fd, allow)` writes a `struct fanotify_response`; when the group's fd is closed
(the agent stops or is killed) the kernel allows every open still waiting.

FAN_OPEN_PERM is what we use (Linux >= 2.6.37, CONFIG_FANOTIFY_ACCESS_PERMISSIONS), not the
pre-content FAN_PRE_ACCESS of Linux >= 6.14: pre-content events come on every read and
write of every file of a marked file system (a bulk copy of holiday photos would pay one
round trip per write), need FAN_CLASS_PRE_CONTENT and file systems that allow it, and are
meant for storage managers that fill files in; a refused open already stops every byte.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import struct

from agent.prevent import syscalls
from agent.prevent.errors import PreventError
from agent.sensors.fanotify import (
    AT_FDCWD,
    FAN_CLASS_NOTIF,
    FAN_CLOEXEC,
    FAN_EVENT_ON_CHILD,
    FAN_MARK_ADD,
    FAN_MARK_DONT_FOLLOW,
    FAN_MARK_FILESYSTEM,
    FAN_MARK_REMOVE,
    FAN_NONBLOCK,
    FAN_OPEN,
    FAN_Q_OVERFLOW,
    FAN_UNLIMITED_MARKS,
    FAN_UNLIMITED_QUEUE,
    Fanotify,
    events,
)

FAN_CLASS_CONTENT = 0x04
FAN_REPORT_FID = 0x200  # events name files by handle, hold no file (nor its mount) open
FAN_OPEN_PERM = 0x10000
FAN_ALLOW = 0x01
FAN_DENY = 0x02

_RESPONSE = struct.Struct("=iI")  # struct fanotify_response: fd, response
_READ_SIZE = 16 * 1024  # a few hundred events: one open waits on each permission event


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


class PermissionGroup(Fanotify):
    """One fanotify group of the content class, in fd mode, non-blocking; events are read as
    the notification group's are (`read`, `close`: the kernel allows what still waits).

    `hearing=True` makes a group of the notification class instead, with the same marking and
    reading: the guard hears tagged opens through one of its own that nothing polls (guard.py).
    `fid=True` (with `hearing`): its events carry no descriptor, only who opened (`pids`): the
    guard hears who opens files on removable media so, and a queued event does not keep the
    stick's mount busy (an fd-mode event holds its file, and an unmount fails meanwhile)."""

    # not Fanotify's __init__: its errors say less
    def __init__(self, *, hearing: bool = False, fid: bool = False) -> None:
        self._libc = _libc()
        flags = (FAN_CLASS_NOTIF if hearing else FAN_CLASS_CONTENT) | (
            FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS) | (
            FAN_REPORT_FID if fid else 0)
        fd = self._libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            what = "FAN_CLASS_NOTIF" if hearing else "FAN_CLASS_CONTENT"
            raise PreventError(f"fanotify_init({what}): permission events unavailable "
                               "(needs root and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)", ctypes.get_errno())
        self.fd = fd

    @classmethod
    def adopt(cls, fd: int) -> PermissionGroup:
        """The group whose descriptor `fd` this process inherited (the responder's)."""
        group = cls.__new__(cls)
        group._libc = _libc()
        group.fd = fd
        return group

    def place(self, path: str, mask: int, *, filesystem: bool = False, remove: bool = False) -> bool:
        """Add (or remove) a mark on an inode or a whole file system; False when `path` is gone."""
        flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | (
            FAN_MARK_FILESYSTEM if filesystem else FAN_MARK_DONT_FOLLOW)
        if self._libc.fanotify_mark(self.fd, flags, mask, AT_FDCWD, os.fsencode(path)) < 0:
            err = ctypes.get_errno()
            if err in (errno_mod.ENOENT, errno_mod.ENOTDIR):
                return False
            raise PreventError(f"fanotify_mark({path})", err)
        return True

    def place_on_medium(self, point: str, *, inside: bool = False, dev: int = -1,
                        remove: bool = False, mask: int = FAN_OPEN_PERM) -> int:
        """Add (or remove) `mask` on the whole removable file system mounted at `point`;
        its device number, or -1 when nothing was marked (gone, or not that file system).

        The mark goes on the directory opened here, never on a path looked up again, and only
        when that directory is the root of a mount of its own (`inside`: or any directory of it,
        a GVfs share's inside its FUSE mount): a stick unmounted before its mount was handled
        leaves the directory under it on a system file system, and a permission mark placed
        there would make every open on that file system wait for the agent. With `dev`, only
        that file system (an unmounted stick's mark went with it; the path names another). With
        `mask` 0, nothing is marked: the device number of the file system that would be."""
        try:
            held = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return -1
        try:
            here = os.fstat(held).st_dev
            if (dev >= 0 and here != dev) or (not inside and os.stat("..", dir_fd=held).st_dev == here):
                return -1
            if not mask:
                return here
            flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | FAN_MARK_FILESYSTEM
            if self._libc.fanotify_mark(self.fd, flags, mask, held, None) < 0:
                raise PreventError(f"fanotify_mark({point})", ctypes.get_errno())
            return here
        finally:
            os.close(held)

    def read(self) -> list[tuple[int, int, int]]:
        """Pending events as (mask, fd, pid), read with the GIL kept (syscalls.py); the caller
        answers or closes each fd. Empty when none."""
        buf = syscalls.read(self.fd, _READ_SIZE)
        return events(buf) if buf else []

    def pids(self) -> list[int]:
        """The pids of the pending events of a `fid` group; empty when none."""
        buf = syscalls.read(self.fd, _READ_SIZE)
        return [pid for mask, _fd, pid in events(buf) if not mask & FAN_Q_OVERFLOW] if buf else []

    def answer(self, fd: int, allow: bool) -> None:
        """Let the waiting open go on (allow) or fail it with EPERM, and close the event's fd."""
        # with the GIL kept (syscalls.py): the thread answering goes on to the next open at once
        # (a failed write: the opener is gone, killed while waiting; nothing waits for the answer)
        self.respond(fd, allow)
        syscalls.close(fd)

    def respond(self, fd: int, allow: bool) -> None:
        """Answer the event read as `fd` without closing it (it is another process's: the
        responder's, which died before answering; the kernel matches the answer by number)."""
        syscalls.write(self.fd, _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))


__all__ = ["FAN_EVENT_ON_CHILD", "FAN_OPEN", "FAN_OPEN_PERM", "FAN_Q_OVERFLOW", "PermissionGroup"]
