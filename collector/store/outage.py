"""Outage: how a process's loops that retry the store tell of it being unavailable.

A database that is down fails every retry (each second, in several loops); a traceback each
time buried what mattered. The first failure logs one line naming the store (its location: the
host, port and database, never a password) and the error; further failures are counted, not
logged; the first success after them logs one line saying it answers again, after how long.
One Outage per Store object (`Store.outage`), shared by the loops of its process.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("exfilguard.collector.store")


class Outage:
    """One store's unavailability, as its process logs it: a line when it begins and when it ends."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.failures = 0  # in the outage under way (0: none)
        self._since = 0.0
        self._lock = threading.Lock()

    @property
    def ongoing(self) -> bool:
        """True between a failure and the next success."""
        return self.failures > 0

    def failed(self, exc: BaseException, doing: str) -> None:
        """A retried store operation (`doing`: what, for the log) failed; logged when it is the first."""
        with self._lock:
            self.failures += 1
            if self.failures > 1:
                return
            self._since = time.monotonic()
        reason = " ".join(str(getattr(exc, "reason", "") or exc).split())  # psycopg's text spans lines
        log.error(
            "store %s unavailable (%s failed): %s; retrying until it answers", self.location, doing, reason,
            extra={"store": self.location, "error": reason},
        )  # fmt: skip

    def succeeded(self) -> None:
        """A store operation succeeded; ends (and logs the end of) an outage under way."""
        if not self.failures:  # the common case, without the lock
            return
        with self._lock:
            failures, self.failures = self.failures, 0
            took = time.monotonic() - self._since
        if failures:
            log.warning(
                "store %s answers again after %.0f s (%d failed attempts)", self.location, took, failures,
                extra={"store": self.location, "outage_seconds": round(took, 1), "failures": failures},
            )  # fmt: skip
