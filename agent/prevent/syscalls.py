"""System calls of the content guard's hot path that keep the interpreter lock.

Every `os.*` call releases the GIL around its system call. On a busy agent (the sensors
hashing the very copy the guard is deciding on) another thread takes it meanwhile, and
getting it back costs up to the switch interval: an answer to a waiting open pays that once
per call. These calls take microseconds and never block (procfs, the permission group's
non-blocking descriptor), so they are made through libc with the lock held (`ctypes.PyDLL`).
Each returns None (or False) on an error instead of raising: the caller then takes the slow,
complete path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import struct
from typing import Any

_libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _function(name: str, restype: type, *argtypes: type) -> Any:
    function = getattr(_libc, name)
    function.argtypes = list(argtypes)
    function.restype = restype
    return function


_int, _long, _size, _ssize, _ptr, _str = (ctypes.c_int, ctypes.c_long, ctypes.c_size_t, ctypes.c_ssize_t,
                                          ctypes.c_void_p, ctypes.c_char_p)
_pread = _function("pread", _ssize, _int, _ptr, _size, _long)
_read = _function("read", _ssize, _int, _ptr, _size)
_write = _function("write", _ssize, _int, _str, _size)
_fstat = _function("fstat", _int, _int, _ptr)
_sched_yield = _function("sched_yield", _int)
_close = _function("close", _int, _int)
_readlinkat = _function("readlinkat", _ssize, _int, _str, _ptr, _size)
_lseek = _function("lseek", _long, _int, _long, _int)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(platform.machine(), -1)
_DIRENT = struct.Struct("=QqHB")  # struct linux_dirent64: d_ino, d_off, d_reclen, d_type; d_name
_DEV = struct.Struct("=Q")
_SIZE = struct.Struct("=q")
_STAT_BYTES = 256  # more than struct stat
_AT_FDCWD = -100
_PATH_MAX = 4096
_DENTS_BYTES = 4096
_DENT_MAX = 280  # the largest linux_dirent64 (a 255-byte name)


def pread(fd: int, size: int, offset: int = 0) -> bytes | None:
    """Up to `size` bytes at `offset` (a procfs file is made anew at each read from 0)."""
    buf = ctypes.create_string_buffer(size)
    got = _pread(fd, buf, size, offset)
    return ctypes.string_at(buf, got) if got >= 0 else None


def read(fd: int, size: int) -> bytes | None:
    """One read of a non-blocking descriptor; None when nothing is there (or on an error)."""
    buf = ctypes.create_string_buffer(size)
    got = _read(fd, buf, size)
    return ctypes.string_at(buf, got) if got > 0 else None


def device_and_size(fd: int) -> tuple[int, int] | None:
    """(st_dev, st_size) of an open file (struct stat: st_dev first, st_size at byte 48 on
    x86_64 and on the generic layout of aarch64)."""
    buf = ctypes.create_string_buffer(_STAT_BYTES)
    if _fstat(fd, buf) < 0:
        return None
    return _DEV.unpack_from(buf, 0)[0], _SIZE.unpack_from(buf, 48)[0]


def yield_cpu() -> None:
    """Let another task on this CPU run (an opener this thread woke up and preempted before it
    went to sleep in its open)."""
    _sched_yield()


def write(fd: int, data: bytes) -> bool:
    """One write of `data`; whether all of it was written."""
    return bool(_write(fd, data, len(data)) == len(data))


def close(fd: int) -> None:
    """Close a descriptor (errors ignored: it is gone either way)."""
    _close(fd)


def readlink(path: str, dirfd: int = _AT_FDCWD) -> str | None:
    """The target of a symbolic link (a /proc fd entry), relative to `dirfd` when given."""
    buf = ctypes.create_string_buffer(_PATH_MAX)
    got = _readlinkat(dirfd, path.encode(), buf, _PATH_MAX)
    return ctypes.string_at(buf, got).decode(errors="surrogateescape") if got >= 0 else None


def names(dirfd: int) -> list[str] | None:
    """The entries of a directory held open (a /proc/PID/fd), read afresh from its start;
    None when it cannot be read (the process is gone)."""
    if _GETDENTS64 < 0 or _lseek(dirfd, 0, 0) < 0:
        return None
    out: list[str] = []
    buf = ctypes.create_string_buffer(_DENTS_BYTES)
    while True:
        got = _syscall(_GETDENTS64, ctypes.c_int(dirfd), buf, ctypes.c_uint(_DENTS_BYTES))
        if got < 0:
            return None
        if got == 0:
            return out
        raw = ctypes.string_at(buf, got)
        done = got < _DENTS_BYTES - _DENT_MAX  # room was left: procfs gave every entry there is
        offset = 0
        while offset < got:
            _ino, _off, reclen, _type = _DIRENT.unpack_from(raw, offset)
            name = raw[offset + _DIRENT.size: offset + reclen].split(b"\0", 1)[0]
            if name not in (b".", b".."):
                out.append(name.decode())
            offset += reclen
        if done:
            return out


# The same calls through `os`, for a process of one thread (the responder): nothing there waits
# for the interpreter lock, and `os` calls cost less than ctypes' (a /proc pread 2.6 vs 5.1 us,
# a readlink 0.8 vs 2.9 us, measured on the build machine).

def _os_pread(fd: int, size: int, offset: int = 0) -> bytes | None:
    try:
        return os.pread(fd, size, offset)
    except OSError:
        return None


def _os_read(fd: int, size: int) -> bytes | None:
    try:
        return os.read(fd, size) or None
    except OSError:
        return None


def _os_write(fd: int, data: bytes) -> bool:
    try:
        return os.write(fd, data) == len(data)
    except OSError:
        return False


def _os_close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _os_readlink(path: str, dirfd: int = _AT_FDCWD) -> str | None:
    try:
        return os.readlink(path, dir_fd=None if dirfd == _AT_FDCWD else dirfd)
    except OSError:
        return None


def _os_names(dirfd: int) -> list[str] | None:
    try:
        return os.listdir(dirfd)  # a duplicate of it, read from its start
    except OSError:
        return None


def _os_device_and_size(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_size


def use_os() -> None:
    """Make this module's calls through `os` from now on (a single-threaded process)."""
    globals().update(pread=_os_pread, read=_os_read, write=_os_write, close=_os_close,
                     readlink=_os_readlink, names=_os_names, device_and_size=_os_device_and_size)
