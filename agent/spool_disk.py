"""Room on the spool's disk: the reserve that makes a full disk recoverable, and the loss file.

A SQLite database in WAL mode that fills its disk can wedge itself: the write-ahead log cannot
be folded into the database (the database file would have to grow), so nothing, not even the
deletion of acknowledged events, can be written any more. The spool therefore holds a
`Reserve`: a preallocated file of a few MiB beside the database. It stores events only while it
holds the reserve; when a write hits a full disk it gives the reserve back to the file system,
which pays for folding the log in and deleting what the collector acknowledged, and it takes
the reserve again (after returning freed pages to the file system) before it stores events again.

`LossFile` keeps the counts of events lost while the database could not be written, so an
agent stopped (or killed) on a full disk still reports them after the next start. It is
allocated once, when there is room, and then only overwritten in place: saving needs no new
disk space. Two checksummed slots, written alternately, so a torn write leaves the other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

log = logging.getLogger("exfilguard.agent.spool")

RESERVE_FILE = "spool.reserve"
LOSSES_FILE = "spool.losses"
RESERVE_MAX = 4 << 20
RESERVE_MIN = 64 << 10

_SLOT = 2048
_MAGIC = b"EGL1"
_HEADER = struct.Struct("<4sIQI")  # magic, crc32 of the payload, write counter, payload length


def reserve_size(directory: Path) -> int:
    """The reserve for a spool in `directory`: an eighth of its file system, 64 KiB to 4 MiB."""
    stat = os.statvfs(directory)
    return max(RESERVE_MIN, min(RESERVE_MAX, stat.f_blocks * stat.f_frsize // 8))


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL and ENOSPC/EDQUOT: the disk (or the quota) has no room."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return code == 13 or "disk is full" in str(exc).lower()  # 13: SQLITE_FULL


class Reserve:
    """A preallocated file whose space the spool gives back when the disk is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = self._allocated() >= size

    def acquire(self) -> bool:
        """Allocate the reserve if it is not held; False when the disk has no room for it."""
        if self.held:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.debug("cannot create %s: %s", self.path, exc)
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
            os.fsync(fd)
        except OSError as exc:
            # Half a reserve is no reserve: give back what was allocated.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            log.debug("cannot allocate the %d-byte spool reserve %s: %s", self.size, self.path, exc)
            return False
        finally:
            os.close(fd)
        self.held = True
        return True

    def release(self) -> bool:
        """Give the reserve's space back to the file system; True if it was held."""
        was_held = self.held
        self.held = False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return was_held

    def _allocated(self) -> int:
        try:
            return self.path.stat().st_blocks * 512
        except OSError:
            return 0


class DiskRoom:
    """The spool database's room on its disk: its reserve, folding its log in, giving pages back.

    Each step that writes to the log stays within `step_bytes` (a quarter of the reserve), so
    the reserve can always pay for folding what was written in since the last fold.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.reserve = Reserve(db_path.parent / RESERVE_FILE, reserve_size(db_path.parent))
        self.step_bytes = self.reserve.size // 4
        self.conn: sqlite3.Connection | None = None  # the spool's connection, once open
        self._unfolded = 0  # bytes written to the log since it was last folded in

    def wrote(self, nbytes: int) -> None:
        """A commit wrote about `nbytes` to the log: fold it in once that adds up to a step."""
        self._unfolded += nbytes
        if self._unfolded > self.step_bytes:
            self.fold()

    def fold(self) -> bool:
        """Checkpoint the write-ahead log into the database; False if the disk had no room.

        Passive: it never waits for a reader. Once all of the log is in the database, the next
        write starts the log file over, reusing its space.
        """
        assert self.conn is not None
        try:
            _, frames, folded = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                log.warning("checkpoint of %s failed: %s", self.db_path, exc)
                return True
            if self.reserve.release():
                log.warning("disk full folding the spool's log in: gave back the spool reserve")
                return self.fold()
            return False
        if frames == folded:
            self._unfolded = 0
        return True

    def regain(self) -> bool:
        """Hold the reserve: if it was given back, fold the log in, give freed pages back and
        take it again. False while the disk has no room for it."""
        if self.reserve.held:
            return True
        if not (self.fold() and self.give_back_free_pages()):
            return False
        if not self.reserve.acquire():
            return False
        log.warning("the spool holds its %d-byte reserve again: storing events again", self.reserve.size)
        return True

    def give_back_free_pages(self) -> bool:
        """Return free database pages to the file system in steps the reserve can fold in;
        False if the disk had no room to fold a step in."""
        assert self.conn is not None
        try:
            while int(self.conn.execute("PRAGMA freelist_count").fetchone()[0]) > 0:
                self.conn.execute(f"PRAGMA incremental_vacuum({self.step_bytes // 4096 + 1})").fetchall()
                if not self.fold():
                    return False
        except sqlite3.Error as exc:
            log.debug("incremental vacuum of %s stopped: %s", self.db_path, exc)
        return True

    def tight(self) -> bool:
        """True when the file system has less than two reserves free."""
        stat = os.statvfs(self.db_path.parent)
        return stat.f_bavail * stat.f_frsize < 2 * self.reserve.size


class LossFile:
    """Pending loss counts, saved in place in a preallocated file when the database cannot take them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._counter = 0
        self.usable = self._prepare()

    def load(self) -> dict[str, Any] | None:
        """The newest intact record saved, or None."""
        try:
            raw = self.path.read_bytes()
        except OSError:
            return None
        best: tuple[int, dict[str, Any]] | None = None
        for offset in (0, _SLOT):
            record = _read_slot(raw[offset:offset + _SLOT])
            if record is not None and (best is None or record[0] > best[0]):
                best = record
        if best is None:
            return None
        self._counter = best[0]
        return best[1]

    def save(self, record: dict[str, Any]) -> bool:
        """Overwrite the older slot with `record` and sync it; False if that failed."""
        if not self.usable:
            return False
        payload = json.dumps(record, separators=(",", ":")).encode()
        if len(payload) > _SLOT - _HEADER.size:
            log.error("pending loss record too large for %s (%d bytes); not saved", self.path, len(payload))
            return False
        counter = self._counter + 1
        slot = _HEADER.pack(_MAGIC, zlib.crc32(payload), counter, len(payload)) + payload
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.pwrite(fd, slot.ljust(_SLOT, b"\0"), (counter % 2) * _SLOT)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot save pending loss counts to %s: %s", self.path, exc)
            return False
        self._counter = counter
        return True

    def _prepare(self) -> bool:
        """Create the file at its full size with real blocks, so later saves need no new space."""
        try:
            if self.path.exists() and self.path.stat().st_size >= 2 * _SLOT:
                return True
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, bytes(2 * _SLOT), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot prepare %s (pending loss counts survive a restart only in the database): %s",
                      self.path, exc)
            return False
        return True


def _read_slot(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    if len(raw) < _HEADER.size:
        return None
    magic, crc, counter, length = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size:_HEADER.size + length]
    if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    return (counter, record) if isinstance(record, dict) else None
