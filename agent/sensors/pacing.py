"""ReadPacing: when the fanotify reader lets its queue fill a moment before reading again.

The reader reads each event the moment it arrives: a short-lived process (cp, tar's gzip) must
still be in /proc when its events are handled. In a flood of events (a program opening
thousands of tagged files, a build in a tagged tree) that costs dear: each event wakes the
reader, which (at niceness -10) takes the CPU from the process making the events, reads one
or two of them and sleeps again, and the kernel never gets to merge an unread event with the
next one of the same process, file and kind (an open and its close, the same file read again).
A flood is told by its wake-ups: each came within `quick` seconds of the reader going back to
wait. After `streak` such wake-ups in a row the reader waits `pause` seconds before it polls
again, so the queue fills and what repeats is merged; the first wake-up after a quiet moment
ends the run, and a lone event is read at once as before. Nor does it rest after reading an event
whose process must be read while it lives (an exec, a write or open on removable media, a write
elsewhere by a process carrying tagged data): those keep it prompt, so only a flood of tagged
files' events (an innocent program reading a tagged tree, a build in one) is paced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAUSE_SECONDS = 0.005
QUICK_SECONDS = 0.002
STREAK = 4


@dataclass(slots=True)
class ReadPacing:
    """Tells the reader, after each drain of the queue, how long to wait before polling again.

    `woke(now)` as the reader wakes for events, `urgent()` for an event that must not wait,
    `rest()` once it drained them (0: poll at once), `idle(now)` as it goes back to wait.
    `pauses` counts the waits made."""

    pause: float = PAUSE_SECONDS
    quick: float = QUICK_SECONDS
    streak: int = STREAK
    pauses: int = 0
    _run: int = field(default=0, init=False)
    _urgent: bool = field(default=False, init=False)
    _idle_since: float = field(default=-1e9, init=False)

    def woke(self, now: float) -> None:
        """The reader woke for events at `now` (monotonic seconds)."""
        self._run = self._run + 1 if now - self._idle_since < self.quick else 0

    def urgent(self) -> None:
        """An event of this drain must not wait: no rest after it, and the run starts again."""
        self._urgent = True

    def rest(self) -> float:
        """Seconds to wait before polling again: `pause` in a flood, else 0."""
        if self._urgent:
            self._urgent, self._run = False, 0
            return 0.0
        if self.pause <= 0 or self._run < self.streak:
            return 0.0
        self.pauses += 1
        return self.pause

    def idle(self, now: float) -> None:
        """The reader goes back to wait for events at `now` (after its rest, if any): a wake-up
        that finds events already queued then counts as quick."""
        self._idle_since = now
