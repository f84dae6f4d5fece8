"""Examiner: content identification off the sensors' event threads.

Opening a 1 GiB archive takes seconds; the fanotify and udev threads must not wait for it.
The copy detector and the raw-write check hand a file or a device to `examine`, which
queues it (bounded: `max_queued` jobs) for one worker thread and calls back with the
Identification. A full queue refuses the job (the caller reports without content evidence);
refusals are logged and reported through `on_loss` at most every `_REPORT_SECONDS`, with
their count, so a burst of thousands of files makes one log line and one gap, not thousands.
A file whose medium fails while it is read (a stick pulled out during inspection) is named in
a warning with the reason; what was read before still counts, and the count goes to `on_loss`
(`content_unreadable`) the same way.

A file's descriptor is held while it waits (a file renamed meanwhile is still read), but
only for the first `_HELD_FDS` waiting jobs: the rest are reopened by path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.content.archive import DEVICE_ERRNOS, device_failure
from agent.content.catalog import LossReport
from agent.content.identify import ContentIdentifier, Identification

log = logging.getLogger(__name__)

Done = Callable[[Identification], None]
QUEUE_FULL = "content_queue_full"
UNREADABLE = "content_unreadable"
_LOSS_LOG = {QUEUE_FULL: "content examination queue full",
             UNREADABLE: "files on removable media not readable to the end (device removed or failed)"}
_HELD_FDS = 64
_REPORT_SECONDS = 10.0


@dataclass
class _Job:
    path: str
    done: Done
    fd: int | None = None
    device_limit: int = 0  # > 0: a raw device, read back this far
    entropy: bool = True   # estimate it even when no tagged content is found

    def drop(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Examiner:
    """One worker thread identifying written files and raw device writes, in arrival order."""

    name = "examiner"

    def __init__(self, identifier: ContentIdentifier, max_queued: int = 4096,
                 on_loss: LossReport | None = None) -> None:
        self.identifier = identifier
        self._queue: queue.Queue[_Job | None] = queue.Queue(max_queued)
        self._on_loss = on_loss
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._lost = {QUEUE_FULL: 0, UNREADABLE: 0}  # files per reason since the last report
        self._reported_at = 0.0

    def start(self) -> None:
        """Start the worker."""
        self._thread = threading.Thread(target=self._run, name="exfilguard-examiner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the job in hand, drop the rest; idempotent."""
        if self._thread is None:
            return
        self._drain()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=5)
        self._thread.join(timeout=30)
        self._thread = None
        self._drain()
        self._report_losses(force=True)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._queue.get_nowait()
                if job is not None:
                    job.drop()

    def examine(self, path: str, done: Done, fd: int | None = None, *, entropy: bool = True) -> bool:
        """Queue a written file; `done(identification)` runs in the worker. False if refused.

        `fd`, if given, is open on the file and now owned by the examiner (closed when done):
        a file renamed or replaced meanwhile (zip, rsync write a temporary name) is still read.
        `entropy`: estimate the file's entropy even if no tagged content is found in it.
        """
        if fd is not None and self._queue.qsize() >= _HELD_FDS:
            os.close(fd)  # bounded: a long queue reopens by path
            fd = None
        return self._put(_Job(path, done, fd, entropy=entropy))

    def examine_device(self, node: str, limit: int, done: Done) -> bool:
        """Queue a raw device: its first `limit` bytes are read back and identified."""
        return self._put(_Job(node, done, device_limit=max(1, limit)))

    def _put(self, job: _Job) -> bool:
        if self._thread is not None:
            try:
                self._queue.put_nowait(job)
                return True
            except queue.Full:
                self._count(QUEUE_FULL)
        job.drop()
        return False

    def _count(self, reason: str) -> None:
        with self._lock:
            self._lost[reason] += 1
        self._report_losses(force=False)

    def _report_losses(self, *, force: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if not any(self._lost.values()) or (not force and now - self._reported_at < _REPORT_SECONDS):
                return
            lost = {reason: count for reason, count in self._lost.items() if count}
            self._lost = dict.fromkeys(self._lost, 0)
            self._reported_at = now
        for reason, count in lost.items():
            log.warning("%s: %d written file(s) reported without (full) content evidence", _LOSS_LOG[reason],
                        count)
            if self._on_loss is not None:
                self._on_loss(reason, count)

    def _run(self) -> None:
        for job in iter(self._queue.get, None):  # until stop() queues None
            try:
                found = self._device(job) if job.device_limit else self._file(job)
                job.done(found)
            except Exception:
                log.exception("content examination of %s failed", job.path)
            finally:
                job.drop()
            if any(self._lost.values()) and self._queue.empty():
                self._report_losses(force=True)  # the burst is over: say how many were missed

    def _file(self, job: _Job) -> Identification:
        path, fd = job.path, job.fd
        if fd is None:
            try:
                fd = job.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                return Identification(refused=f"{path}: not readable for examination: {exc.strerror}")
        try:
            found = self.identifier.identify_fd(fd, os.fstat(fd).st_size, path, entropy=job.entropy)
        except OSError as exc:  # the file truncated meanwhile, the stick gone before a byte was read
            found = Identification(refused=f"{path}: read failed during examination: {exc.strerror}",
                                   read_error=device_failure(exc, 0) if exc.errno in DEVICE_ERRNOS else "")
            if not found.read_error:
                log.warning("examining %s stopped: %s", path, exc)
        if found.read_error:  # a stick pulled out during inspection: what was read still counts
            log.warning("examining %s stopped: %s; %s", path, found.read_error,
                        f"tagged data found before: {', '.join(found.sources[:3])}" if found.found
                        else "no tagged data found before")
            self._count(UNREADABLE)
        elif found.refused:  # bad input is named in the log even when nothing tagged was found
            log.info("examining %s: %s", path, found.refused)
        return found

    def _device(self, job: _Job) -> Identification:
        node = job.path
        try:
            with open(node, "rb", buffering=0) as device:  # noqa: PTH123 - a device node
                return self.identifier.identify_stream(device, node, job.device_limit)
        except OSError as exc:
            log.warning("reading back %s stopped: %s", node, exc)
            return Identification(refused=f"{node}: read back failed: {exc.strerror}")
