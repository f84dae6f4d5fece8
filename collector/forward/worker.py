"""ForwardWorker: one thread per destination, streaming stored events after its cursor, at least once.

    worker = ForwardWorker("elastic", destination, book, "ecs", batch_size=500, retry_max=30.0)
    worker.start(); worker.wake()        # the collector wakes it when events were stored
    worker.stop()

Each round reads up to `batch_size` stored events after the destination's cursors (per agent,
in sequence order, within each agent's stored prefix; agents take turns so a busy one does not
starve the rest), formats them, and delivers the batch. Only when the destination took all
of it do the cursors move, in the store (collector/store/cursors.py): a restart or an outage
resumes from there, and events may arrive twice (at least once), never not at all.

A failed delivery is retried for ever, with backoff doubling from 0.5 s up to `retry_max`
(jittered), while the cursors wait. The worker reads from a connection of its own and holds
at most one batch in memory, so a slow or dead destination never slows ingest: the events
simply wait in the store, which is what `lag_events` counts.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from collector import formats
from collector.forward.destinations import Destination, Item
from collector.forward.errors import REASONS, DeliveryError
from collector.store.base import StoreError
from collector.store.cursors import CursorBook
from collector.store.rows import stored_mapping
from common.ecstime import ecs_epoch, ecs_now
from protos import exfilguard_pb2 as pb
from protos.events import to_mapping

log = logging.getLogger("exfilguard.collector.forward")

POLL_SECONDS = 1.0  # also checked without a wake-up: events stored by another collector (PostgreSQL)
BACKOFF_FIRST = 0.5
# Events just stored, as the collector hands them to its listeners, kept for the worker so a
# destination that keeps up does not decode the rows again. Bounded: beyond it, events are read
# and decoded from the store as after an outage. ~1 KiB each.
MAX_RECENT = 20_000


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
    ) -> None:
        self.name = name
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
        self._recent: dict[str, dict[int, pb.Event]] = {}  # agent -> sequence -> stored event
        self._recent_count = 0
        self._recent_lock = threading.Lock()
        self._turn = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"forward-{name}", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """New events were stored: look now rather than at the next poll (never blocks)."""
        self._wake.set()

    def offer(self, events: Sequence[pb.Event]) -> None:
        """Events just stored, as the collector has them: used instead of reading and decoding the
        rows again. Never blocks for long; past MAX_RECENT held, the rest are read from the store.
        """
        with self._recent_lock:
            for event in events:
                if self._recent_count >= MAX_RECENT:
                    break
                agent, sequence = event.agent.id, event.event.sequence
                if sequence <= self.cursors.get(agent, 0):
                    continue
                held = self._recent.setdefault(agent, {})
                if sequence not in held:
                    held[sequence] = event
                    self._recent_count += 1
        self._wake.set()

    def _take(self, agent: str, sequence: int, data: bytes) -> Mapping[str, Any]:
        with self._recent_lock:
            held = self._recent.get(agent)
            event = held.pop(sequence, None) if held else None
            if event is not None:
                self._recent_count -= 1
        if event is None:
            return stored_mapping(self.book.reader.location, agent, sequence, data)
        return to_mapping(event)

    def _forget(self, moved: Mapping[str, int]) -> None:
        """Drop held events the cursors passed (read from the store before they were offered)."""
        with self._recent_lock:
            for agent, cursor in moved.items():
                held = self._recent.get(agent)
                if not held:
                    continue
                for sequence in [s for s in held if s <= cursor]:
                    del held[sequence]
                    self._recent_count -= 1
                if not held:
                    del self._recent[agent]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the delivery under way (its cursor saved if it went through)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.destination.close()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.cursors = self.book.load(self.name)
                break
            except StoreError as exc:
                log.warning("forward %s: cannot read its cursors: %s", self.name, exc)
                self._stop.wait(POLL_SECONDS)
        while not self._stop.is_set():
            try:
                items = self.next_batch()
            except StoreError as exc:
                log.warning("forward %s: cannot read stored events: %s", self.name, exc)
                self._stop.wait(POLL_SECONDS)
                continue
            if not items:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            if self._deliver(items):
                self._advance(items)

    def next_batch(self) -> list[Item]:
        """The next events after the cursors (at most batch_size); updates the lag figures."""
        heads, behind = self._lag()
        if not behind:
            self.lag_seconds = 0.0
            return []
        agents = sorted(behind)
        self._turn = (self._turn + 1) % len(agents)
        agents = agents[self._turn :] + agents[: self._turn]
        share = max(1, self.batch_size // len(agents))
        items: list[Item] = []
        for agent in agents:
            room = self.batch_size - len(items)
            if room <= 0:
                break
            after = self.cursors.get(agent, 0)
            for sequence, data in self.book.after(agent, after, heads[agent], min(room, share)):
                mapping = self._take(agent, sequence, data)
                doc = formats.event(self.format, mapping)
                items.append(Item(agent, sequence, str(mapping.get("event.id", "")), mapping, doc))
        self.lag_seconds = _age(items)
        return items

    def _lag(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every agent's stored prefix, and how far each is ahead of the cursor (lag_events updated)."""
        heads = self.book.heads()
        behind = {a: h - self.cursors.get(a, 0) for a, h in heads.items() if h > self.cursors.get(a, 0)}
        self.lag_events = sum(behind.values())
        return heads, behind

    def _deliver(self, items: Sequence[Item]) -> bool:
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
            with contextlib.suppress(StoreError):  # the lag keeps growing while the destination is away
                self._lag()
            # Jitter so that several collectors do not hammer a recovering destination in step.
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.retry_max)
        return False

    def _advance(self, items: Sequence[Item]) -> None:
        moved: dict[str, int] = {}
        for item in items:
            moved[item.agent_id] = max(moved.get(item.agent_id, 0), item.sequence)
        self.cursors.update(moved)
        self._forget(moved)
        try:
            self.book.save(self.name, moved, ecs_now())
        except StoreError as exc:
            # The destination has them; a restart before the next save sends them again (at least once).
            log.warning("forward %s: cannot save its cursors: %s", self.name, exc)

    def figures(self) -> dict[str, Any]:
        """What the metrics read."""
        return {
            "delivered": self.delivered,
            "batches": self.batches,
            "failures": dict(self.failures),
            "lag_events": self.lag_events,
            "lag_seconds": self.lag_seconds,
        }


def _age(items: Sequence[Item]) -> float:
    times = [t for t in (ecs_epoch(i.mapping.get("@timestamp")) for i in items) if t is not None]
    return max(0.0, time.time() - min(times)) if times else 0.0
