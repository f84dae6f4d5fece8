"""Background: the daemon thread a sensor (or the content catalog) runs its loop on.

    self._background = Background("mounts", self._run)
    self._background.start()          # in start()
    ...tell the loop to return (an Event, a StopPipe)...
    self._background.join()           # in stop(): bounded, idempotent

Threads are named `exfilguard-NAME` (what `ps -T` and py-spy show) and are daemons, so a stuck
one never holds the agent's exit; `join` waits a bounded time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """One daemon thread `exfilguard-NAME` running `target`: `start` begins it, `join` waits for it
    to end (after its owner told it to stop) and forgets it, so a later `start` runs it anew."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = f"exfilguard-{name}"
        self._target = target
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Started and not joined yet."""
        return self._thread is not None

    def start(self) -> None:
        """Run `target` on a new daemon thread."""
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10) -> bool:
        """Wait up to `timeout` seconds for the thread to end, and forget it; True when it has ended
        (or none was running), False when it is still busy."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout=timeout)
        return not thread.is_alive()
