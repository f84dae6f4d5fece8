"""A large CSV export's rows built, hashed and written by a forked child process.

The exporting process reads, decodes and re-checks every record (what a dump of the table does
too) and hands the child only the canonical record and the bookkeeping, in batches over a pipe.
The child reads each record back (its canonical JSON is exact: the same values come back), builds
the row with `CsvRows` (the same bytes as in one process), hashes and writes it. The two cores
share the work: the export runs at the pace of its reading.

Forked, not spawned: nothing is imported again, and the child touches neither the store nor any
lock of the parent (the exporter forks only while it is the process's one thread).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import marshal
import os
import signal
import threading
from typing import Any, BinaryIO

import orjson

from collector.evidence.csvrows import CsvRows
from collector.evidence.errors import ExportError

_LENGTH = 4  # bytes of a batch's length on the pipe; a zero length ends the rows
_PIPE_BYTES = 1 << 20  # Linux's default most (/proc/sys/fs/pipe-max-size)


def can_fork() -> bool:
    """Whether a child can be forked safely here: a POSIX system, and this process's one thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


def core_free() -> bool:
    """Whether the machine has a core to spare for the child (the 1-minute load average, this export
    included, is below the core count): on busy cores the two processes only wait for each other,
    and one process does the same work with less CPU in all."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return True
    return load < (os.cpu_count() or 1)


class CsvChild:
    """The rows' sink for `export.write_export`: `add` a record, `extend` posts the batch, `finish`.

    After `finish`, `sha256` and `bytes` say what the child wrote (header included).
    """

    def __init__(self, out: BinaryIO) -> None:
        out.flush()  # the child writes to the same file from here on
        rows_r, rows_w = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # batches wait in the pipe, not the exporter
            fcntl.fcntl(rows_w, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        back_r, back_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(rows_w)
                os.close(back_r)
                code = _serve(rows_r, out.fileno(), back_w)
            finally:
                os._exit(code)
        os.close(rows_r)
        os.close(back_w)
        self._pid = pid
        self._rows = os.fdopen(rows_w, "wb")
        self._back = back_r
        self._batch: list[tuple[bytes, str, str, int]] = []
        self.parts: list[bytes] = []  # what write_export hands to extend: the rows are the child's
        self.sha256 = ""
        self.bytes = 0

    def add(self, body: dict[str, Any], prev_hex: str, hash_hex: str, previous: int, record: bytes) -> None:
        """Queue one row; the child reads `body` back from `record`."""
        del body
        self._batch.append((record, prev_hex, hash_hex, previous))

    def extend(self, parts: list[bytes]) -> None:
        """Post the queued rows to the child (`parts` is this object's own, always empty)."""
        del parts
        if self._batch:
            data = marshal.dumps(self._batch)
            self._batch.clear()
            self._post(len(data).to_bytes(_LENGTH, "little") + data)

    def finish(self) -> None:
        """Post the rest, end the rows and wait for the child's answer; raises what writing raised."""
        self.extend(self.parts)
        self._post(bytes(_LENGTH))
        self._rows.close()
        answer = b""
        while chunk := os.read(self._back, 1 << 16):
            answer += chunk
        self._reap()
        if not answer:
            raise ExportError("-", "the CSV writing process ended without an answer")
        said = json.loads(answer)
        if said["errno"]:
            raise OSError(said["errno"], said["error"])
        self.sha256, self.bytes = said["sha256"], said["bytes"]

    def stop(self) -> None:
        """End the child if it still runs (the export failed); idempotent."""
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        with contextlib.suppress(OSError):
            self._rows.close()

    def _post(self, data: bytes) -> None:
        try:
            self._rows.write(data)
        except BrokenPipeError as exc:
            raise ExportError("-", "the CSV writing process ended early") from exc

    def _reap(self) -> None:
        if self._pid:
            os.waitpid(self._pid, 0)
            self._pid = 0
            os.close(self._back)


def _record(data: bytes) -> dict[str, Any]:
    try:
        value: dict[str, Any] = orjson.loads(data)
    except orjson.JSONDecodeError:  # NaN or Infinity, which the definition's json writes
        value = json.loads(data)
    return value


def _serve(rows_fd: int, out_fd: int, back_fd: int) -> int:
    """The child: rows from the pipe to the file, hashed; the answer as JSON on `back_fd`."""
    rows = CsvRows()
    digest = hashlib.sha256()
    size = 0
    error: OSError | None = None
    reader = os.fdopen(rows_fd, "rb")
    while True:
        if rows.parts and error is None:
            data = b"".join(rows.parts)
            try:
                digest.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(out_fd, view) :]
                size += len(data)
            except OSError as exc:  # reported in the answer; the rest is read and dropped
                error = exc
        rows.parts.clear()
        length = int.from_bytes(reader.read(_LENGTH), "little")
        if not length:
            break
        for record, prev_hex, hash_hex, previous in marshal.loads(reader.read(length)):  # noqa: S302 (ours)
            rows.add(_record(record), prev_hex, hash_hex, previous, record)
    answer: dict[str, Any] = {"sha256": digest.hexdigest(), "bytes": size, "errno": 0, "error": ""}
    if error is not None:
        answer.update(errno=error.errno or errno.EIO, error=str(error.strerror or error))
    os.write(back_fd, json.dumps(answer).encode())
    os.close(back_fd)
    return 0
