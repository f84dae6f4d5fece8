"""ForwardWorker: one thread per destination, streaming stored events after its cursor, at least once.

    worker = ForwardWorker("elastic", destination, book, "ecs", batch_size=500, retry_max=30.0)
    worker.start(); worker.wake()        # the collector wakes it when events were stored
    worker.stop()

Each round reads up to `batch_size` stored events after the destination's cursors (per agent,
in sequence order, within each agent's stored prefix; agents take turns so a busy one does not
starve the rest), turns each into the format's JSON once (formats.event_json: laid out per
shape of event), and delivers the batch in one request or write. Only when the destination took
all of it do the cursors move, in the store (collector/store/cursors.py): a restart or an outage
resumes from there, and events may arrive twice (at least once), never not at all.

Collectors sharing a PostgreSQL store forward each destination from one of them at a time: the
worker leads its destination (`lead`, collector/store/leadership.py) before it reads a batch, and
a worker that does not lead only watches the shared cursors (for its lag figures). When the
leader dies, another takes over within POLL_SECONDS and resumes from the cursors in the store:
only the batch in flight when the leader died can reach the destination twice.

A failed delivery is retried for ever, with backoff doubling from 0.5 s up to `retry_max`
(jittered), while the cursors wait. The worker reads from a connection of its own and holds
at most two batches in memory (the one on its way, and the next, read and formatted during the
round trip), so a slow or dead destination never slows ingest: the events
simply wait in the store, which is what `lag_events` counts.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from collector import formats
from collector.forward.destinations import Batch, Destination
from collector.forward.errors import REASONS, DeliveryError
from collector.forward.formatted import Formatted, Formatter
from collector.store.base import StoreError
from collector.store.cursors import CursorBook
from collector.store.leadership import Leadership
from collector.store.outage import Outage
from common.ecstime import ecs_epoch, ecs_now

log = logging.getLogger("exfilguard.collector.forward")

POLL_SECONDS = 1.0  # also checked without a wake-up: events stored by another collector (PostgreSQL)
BACKOFF_FIRST = 0.5
HEADS_SECONDS = 0.5  # a worker with more than a batch to send reads the stored prefixes this often


class ForwardWorker:
    """Streams every stored event to one destination."""

    def __init__(
        self,
        name: str,
        destination: Destination,
        book: CursorBook,
        fmt: str,
        *,
        batch_size: int = 500,
        retry_max: float = 30.0,
        lead: Leadership | None = None,
        formatter: Formatter | Formatted | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.name = name
        # a store outage is one line when it begins and one when it ends, not a warning each poll
        self.outage = outage if outage is not None else Outage("of the forwarding cursors")
        self.destination = destination
        self.book = book
        self.format = formats.checked(fmt)
        self.batch_size = batch_size
        self.retry_max = retry_max
        self.delivered = 0  # events the destination took (counted again when sent again)
        self.batches = 0
        self.failures = dict.fromkeys(REASONS, 0)
        self.lag_events = 0  # stored events not forwarded yet, at the last look
        self.lag_seconds = 0.0  # how old the oldest of them is (event time), at the last look
        self.cursors: dict[str, int] = {}
        self.lead = lead  # None: this worker alone forwards the destination (one collector, SQLite)
        self.leading = lead is None
        # How rows become JSON: the forward process's (helpers, and shared by its destinations)
        self.formatter = formatter or Formatter(book.reader.location)
        self._term = 0  # the leadership term the cursors were loaded in (0: not loaded yet)
        self._turn = 0
        self._heads: dict[str, int] = {}  # every agent's stored prefix, read at _heads_at
        self._heads_at = -HEADS_SECONDS
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"forward-{name}", daemon=True)
        self._sender = ThreadPoolExecutor(1, thread_name_prefix=f"forward-{name}-send")

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """New events were stored: look now rather than at the next poll (never blocks)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the delivery under way (its cursor saved if it went through)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._sender.shutdown(wait=False)
        self.destination.close()
        if self.lead is not None:
            self.lead.release()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stream()
            except Exception:  # a bug must not end forwarding for good: logged, then from the cursors again
                log.exception("forward %s: crashed; starting again from its cursors", self.name)
                self._term = 0
                self._stop.wait(POLL_SECONDS)

    def _stream(self) -> None:
        ahead: Batch | None = None  # the next batch, read and formatted while the one before was on its way
        while not self._stop.is_set():
            term = self._term
            if not self._lead():
                ahead = None
                self._stop.wait(POLL_SECONDS)
                continue
            if self._term != term:
                ahead = None  # led again after a lapse: others may have moved the cursors meanwhile
            try:
                items = ahead or self.next_batch()
            except StoreError as exc:
                self.outage.failed(exc, f"forward {self.name}: reading stored events")
                self._stop.wait(POLL_SECONDS)
                continue
            self.outage.succeeded()
            ahead = None
            if not items:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            self.lag_seconds = _age(items)  # the oldest event not forwarded yet is in this batch
            # The destination's answer and the cursor save take a round trip each: the next batch
            # is made meanwhile.
            sending = self._sender.submit(self._deliver_and_save, items)
            moved = items.last()
            with contextlib.suppress(StoreError):  # read again after this batch, then
                ahead = self.next_batch({**self.cursors, **moved})
            if sending.result():
                self.cursors.update(moved)
            else:
                ahead = None  # stopping, or another collector forwards now: from the cursors again

    def _lead(self) -> bool:
        """Lead the destination (cursors read afresh on taking over); False: another collector does,
        and this one refreshes its figures from the shared cursors."""
        leading = self.lead is None or self.lead.try_acquire()
        term = self.lead.terms if self.lead is not None else 1
        try:
            if not leading or term != self._term:
                self.cursors = self.book.load(self.name)
            if not leading:
                self._lag()
        except StoreError as exc:
            self.outage.failed(exc, f"forward {self.name}: reading its cursors")
            return False
        if leading and term != self._term:
            self._term = term
            if self.lead is not None and self.lead.shared:
                log.info(
                    "forward %s: this collector forwards it now", self.name, extra={"destination": self.name}
                )
        self.leading = leading
        return leading

    def next_batch(self, after: Mapping[str, int] | None = None) -> Batch:
        """The next events after the cursors, or after `after` (at most batch_size); updates lag_events."""
        positions = self.cursors if after is None else after
        heads, behind = self._lag(positions, fresh=False)
        if sum(behind.values()) < self.batch_size:  # less than a batch known to wait: look again
            heads, behind = self._lag(positions)
        if not behind:
            if after is None:
                self.lag_seconds = 0.0
            return Batch([], [], ids=[], times=[], hosts=[], docs=[])
        agents = sorted(behind)
        self._turn = (self._turn + 1) % len(agents)
        agents = agents[self._turn :] + agents[: self._turn]
        share = max(1, self.batch_size // len(agents))
        ranges = [(agent, positions.get(agent, 0), heads[agent]) for agent in agents]
        rows = self.book.batch(ranges, share, self.batch_size)
        laid = self.formatter.get(rows, self.format, self.name)
        agent_ids, sequences = [row[0] for row in rows], [row[1] for row in rows]
        return Batch(
            agent_ids, sequences, ids=laid.ids, times=laid.times, hosts=laid.hosts, docs=laid.docs[0]
        )

    def _lag(
        self, positions: Mapping[str, int] | None = None, fresh: bool = True
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Every agent's stored prefix, and how far each is ahead of `positions` (default: the
        cursors); lag_events updated (from the cursors). Not `fresh`: the prefixes read last, if
        they are at most HEADS_SECONDS old (a worker far behind need not read them every batch)."""
        now = time.monotonic()
        if fresh or now - self._heads_at > HEADS_SECONDS:
            self._heads, self._heads_at = self.book.heads(), now
        heads = self._heads
        cursors = self.cursors
        self.lag_events = sum(h - cursors.get(a, 0) for a, h in heads.items() if h > cursors.get(a, 0))
        at = cursors if positions is None else positions
        behind = {a: h - at.get(a, 0) for a, h in heads.items() if h > at.get(a, 0)}
        return heads, behind

    def _deliver(self, items: Batch) -> bool:
        """Deliver the batch, retrying until it is taken (True) or the worker stops (False)."""
        delay = min(BACKOFF_FIRST, self.retry_max)
        while not self._stop.is_set():
            try:
                self.destination.deliver(items)
                self.delivered += len(items)
                self.batches += 1
                return True
            except DeliveryError as exc:
                self.failures[exc.reason] += 1
                log.warning(
                    "forward %s: %d event(s) not delivered, retrying in %.1f s: %s",
                    self.name,
                    len(items),
                    delay,
                    exc.message,
                    extra={"destination": self.name, "reason": exc.reason},
                )
            except Exception:  # a bug must not end forwarding for good; the batch is tried again
                self.failures["connection"] += 1
                log.exception("forward %s: delivery crashed", self.name)
            if isinstance(self.formatter, Formatted):  # the other destinations stop laying out for it
                self.formatter.away(self.name)
            with contextlib.suppress(StoreError):  # the lag keeps growing while the destination is away
                self._lag()
            if self.lead is not None and not self.lead.held():
                self.leading = False  # another collector forwards from the cursors in the store now
                return False
            # Jitter so that several collectors do not hammer a recovering destination in step.
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.retry_max)
        return False

    def _deliver_and_save(self, items: Batch) -> bool:
        """Deliver the batch (`_deliver`), then move its cursors in the store; the worker's own copy
        of them moves when it sees True (this runs on the sender thread)."""
        if not self._deliver(items):
            return False
        self._save(items.last())
        return True

    def _save(self, moved: dict[str, int]) -> None:
        try:
            self.book.save(self.name, moved, ecs_now())
        except StoreError as exc:
            # The destination has them; a restart before the next save sends them again (at least once).
            self.outage.failed(exc, f"forward {self.name}: saving its cursors")
        else:
            self.outage.succeeded()

    def figures(self) -> dict[str, Any]:
        """What the metrics read."""
        return {
            "delivered": self.delivered,
            "batches": self.batches,
            "failures": dict(self.failures),
            "lag_events": self.lag_events,
            "lag_seconds": self.lag_seconds,
            "leading": self.leading,
        }


def _age(items: Batch) -> float:
    """How old (event time) the oldest event of the batch is: each agent's first is its oldest."""
    times = [t for t in map(ecs_epoch, items.oldest().values()) if t is not None]
    return max(0.0, time.time() - min(times)) if times else 0.0
