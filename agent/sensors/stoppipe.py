"""The self-pipe a sensor's thread polls beside its source, so that `stop()` wakes it at once.

Used by the sensors that block in poll() on a kernel source (udev, the mount table, fanotify).
"""

from __future__ import annotations

import os
import select

from agent.background import Background


class StopPipe:
    """A pipe: `register` it with the thread's poller, `rang` tells the thread to return."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def register(self, poller: select.poll) -> None:
        """Make `poller` wake when `wake` writes."""
        poller.register(self._read, select.POLLIN)

    def rang(self, ready: list[tuple[int, int]]) -> bool:
        """True when poll's `ready` list holds the wake-up: the thread should return."""
        return any(fd == self._read for fd, _ in ready)

    def wake(self, background: Background, timeout: float = 10) -> None:
        """Wake the thread of `background` (if it runs) and wait up to `timeout` seconds for it to end."""
        if background.running:
            os.write(self._write, b"x")
            background.join(timeout)

    def close(self) -> None:
        """Close both ends; idempotent."""
        if self._write >= 0:
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1
