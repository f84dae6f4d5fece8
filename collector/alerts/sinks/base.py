"""QueuedSink: a bounded queue and one worker thread per sink; delivery retried with backoff.

`send()` never blocks: when the queue is full the oldest alert is dropped and counted (the
alert is still in the store, still owed to the sink: collector/store/outbox.py). A delivery that
keeps failing is retried `max_retries` times with exponential backoff (0.5 s doubling, capped at
30 s, jittered), then dropped and counted. `settled` hears of each alert that has its final answer
(delivered or given up), which the store's outbox then forgets; an alert dropped from a full
queue, or cut short by a stop, is not settled and goes out again from the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from collector import formats
from collector.alerts.errors import SinkError
from collector.alerts.routing import Route

log = logging.getLogger("exfilguard.collector.alerts")

QUEUE_SIZE = 10_000
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


class QueuedSink:
    """Base of every sink: subclasses implement `deliver(alert)` and may override `close_resources()`."""

    name = "sink"
    route = Route()  # which alerts this sink takes (collector.yaml: min_severity, policies, tags)
    format = "exfilguard"  # exfilguard, ecs or ocsf (collector/formats)
    key = ""  # names its deliveries in the store's alert outbox (dispatch.sink_key)

    def __init__(self, max_retries: int = 0, queue_size: int = QUEUE_SIZE) -> None:
        self.max_retries = max_retries
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.filtered = 0  # alerts its route did not take
        self.settled: Callable[[QueuedSink, dict[str, Any]], None] | None = None  # on its worker thread
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self._thread = threading.Thread(target=self._work, name=f"alert-sink-{self.name}", daemon=True)
        self._thread.start()

    def deliver(self, alert: dict[str, Any]) -> None:
        """Send one alert now; raise SinkError on failure (retry=False: do not try again)."""
        raise NotImplementedError

    def configure(self, route: Route, fmt: str) -> None:
        """Set the sink's route and output format (before the first `send`)."""
        self.route, self.format = route, formats.checked(fmt)

    def document(self, alert: dict[str, Any]) -> dict[str, Any]:
        """The alert in the sink's format."""
        return formats.alert(self.format, alert)

    def close_resources(self) -> None:
        """Release sockets and files (called on the worker thread at the end)."""

    def send(self, alert: dict[str, Any]) -> None:
        """Queue an alert its route takes; never blocks (drops the oldest queued alert when full)."""
        if not self.route.accepts(alert):
            self.filtered += 1
            return
        with self._idle:
            self._busy += 1
        while True:
            try:
                self._queue.put_nowait(alert)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    continue
                self.dropped += 1
                self._done()
                log.warning("alert sink %s queue full: dropped the oldest alert", self.name)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within `timeout`), then stop the worker."""
        self.flush(timeout)
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue: the stop flag ends the worker anyway
            self._queue.put_nowait(None)
        self._thread.join(timeout=timeout)

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            if not self._busy:
                self._idle.notify_all()

    def _work(self) -> None:
        try:
            for alert in iter(self._queue.get, None):  # until close() queues None
                try:
                    if self._deliver_with_retries(alert) and self.settled is not None:
                        self.settled(self, alert)
                finally:
                    self._done()
        finally:
            try:
                self.close_resources()
            except Exception:
                log.exception("alert sink %s failed to close", self.name)

    def _deliver_with_retries(self, alert: dict[str, Any]) -> bool:
        """Deliver with retries; False when a stop cut the retries short (the alert stays owed)."""
        delay = BACKOFF_FIRST
        for attempt in range(self.max_retries + 1):
            try:
                self.deliver(alert)
                self.sent += 1
                return True
            except SinkError as exc:
                last = attempt == self.max_retries or not exc.retry
                log.warning(
                    "alert sink %s failed (attempt %d of %d): %s",
                    self.name,
                    attempt + 1,
                    self.max_retries + 1,
                    exc.reason,
                    extra={"alert_id": alert.get("id"), "sink": self.name},
                )
                if last:
                    break
            except Exception:
                log.exception("alert sink %s crashed on alert %s", self.name, alert.get("id"))
                break
            # Jitter so that a collector's sinks do not hammer a recovering receiver in step.
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                self.failed += 1
                return False
            delay = min(delay * 2, BACKOFF_MAX)
        self.failed += 1
        return True
