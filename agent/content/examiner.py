"""Examiner: content identification off the sensors' event threads.

Opening a 1 GiB archive takes seconds; the fanotify and udev threads must not wait for it.
The copy detector and the raw-write check hand a file or a device to `examine`, which
queues it (bounded) for one worker thread and calls back with the Identification. A full
queue refuses the job (the caller reports without content evidence) and counts the loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable

from agent.content.catalog import LossReport
from agent.content.identify import ContentIdentifier, Identification

log = logging.getLogger(__name__)

Done = Callable[[Identification], None]
_STOP = object()


class Examiner:
    """One worker thread identifying written files and raw device writes, in arrival order."""

    name = "examiner"

    def __init__(self, identifier: ContentIdentifier, max_queued: int = 256,
                 on_loss: LossReport | None = None) -> None:
        self.identifier = identifier
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self._on_loss = on_loss
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()

    def start(self) -> None:
        """Start the worker."""
        self._thread = threading.Thread(target=self._run, name="exfilguard-examiner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the job in hand, drop the rest; idempotent."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=5)
        self._thread.join(timeout=30)
        self._thread = None

    def examine(self, path: str, done: Done, fd: int | None = None) -> bool:
        """Queue a written file; `done(identification)` runs in the worker. False if refused.

        `fd`, if given, is open on the file and now owned by the examiner (closed when done):
        a file renamed or replaced meanwhile (zip, rsync write a temporary name) is still read.
        """
        if self._put(lambda: done(self._file(path, fd)), path):
            return True
        if fd is not None:
            os.close(fd)
        return False

    def examine_device(self, node: str, limit: int, done: Done) -> bool:
        """Queue a raw device: its first `limit` bytes are read back and identified."""
        return self._put(lambda: done(self._device(node, limit)), node)

    def _put(self, job: Callable[[], None], what: str) -> bool:
        if self._thread is None:
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            log.warning("content examination queue full: %s reported without content evidence", what)
            if self._on_loss is not None:
                self._on_loss("content_queue_full", 1)
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            try:
                assert callable(job)
                job()
            except Exception:
                log.exception("content examination failed")

    def _file(self, path: str, fd: int | None) -> Identification:
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                return Identification(refused=f"{path}: not readable for examination: {exc.strerror}")
        try:
            found = self.identifier.identify_fd(fd, os.fstat(fd).st_size, path)
            if found.refused:  # bad input is named in the log even when nothing tagged was found
                log.info("examining %s: %s", path, found.refused)
            return found
        except OSError as exc:  # the stick pulled, the file truncated meanwhile
            log.warning("examining %s stopped: %s", path, exc)
            return Identification(refused=f"{path}: read failed during examination: {exc.strerror}")
        finally:
            os.close(fd)

    def _device(self, node: str, limit: int) -> Identification:
        try:
            with open(node, "rb", buffering=0) as device:  # noqa: PTH123 - a device node
                return self.identifier.identify_stream(device, node, limit)
        except OSError as exc:
            log.warning("reading back %s stopped: %s", node, exc)
            return Identification(refused=f"{node}: read back failed: {exc.strerror}")
