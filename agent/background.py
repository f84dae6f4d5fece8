"""Background: the daemon thread a sensor (or the content catalog) runs its loop on.

    self._background = Background("mounts", self._run)
    self._background.start()          # in start()
    ...tell the loop to return (an Event, a StopPipe)...
    self._background.join()           # in stop(): bounded, idempotent

Threads are named `exfilguard-NAME` (what `ps -T` and py-spy show) and are daemons, so a stuck
one never holds the agent's exit; `join` waits a bounded time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Background:
    """One daemon thread `exfilguard-NAME` running `target`: `start` begins it, `join` waits for it
    to end (after its owner told it to stop) and forgets it, so a later `start` runs it anew."""

    def __init__(self, name: str, target: Callable[[], None], *, nice: int = 0) -> None:
        self.name = f"exfilguard-{name}"
        self._target = target
        self._nice = nice  # the thread's own niceness, when not 0 (see `_run`)
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Started and not joined yet."""
        return self._thread is not None

    def start(self) -> None:
        """Run `target` on a new daemon thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10) -> bool:
        """Wait up to `timeout` seconds for the thread to end, and forget it; True when it has ended
        (or none was running), False when it is still busy."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout=timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        if self._nice:
            hurry(self.name, self._nice)
        self._target()


def hurry(name: str, nice: int) -> None:
    """Give the calling thread niceness `nice` (Linux schedules each thread on its own), as
    auditd's priority_boost does: a reader that must look at /proc before short-lived processes
    are reaped cannot wait behind the CPU-bound programs of a busy machine. Without CAP_SYS_NICE
    the thread keeps the process's niceness, and the log says so."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        with contextlib.suppress(OSError):
            nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        log.warning("%s runs at niceness %d, not the one asked for: %s", name, nice, exc.strerror)
