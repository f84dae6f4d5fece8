"""Rate limits on logins: failed attempts per client address and per account name.

After MAX_FAILURES failed logins (wrong password, unknown or used link) within WINDOW_SECONDS
from one address, or against one name, further attempts are refused until the oldest failure
leaves the window. Kept in the collector's memory: a restart forgets them, which costs a
guesser a restart of the collector they cannot cause.
"""

from __future__ import annotations

import collections
import time

MAX_FAILURES = 5
WINDOW_SECONDS = 300.0
MAX_KEYS = 100_000  # addresses and names tracked; beyond it the oldest are forgotten


class LoginLimiter:
    """Counts failures by key (an address or a name) in a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW_SECONDS) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        times = self._failures.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def blocked(self, *keys: str) -> float:
        """Seconds until any of the keys may try again (0: it may now)."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        """Count one failure against each key."""
        now = time.monotonic()
        for key in keys:
            times = self._failures.setdefault(key, collections.deque())
            times.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > MAX_KEYS:
            self._failures.popitem(last=False)
