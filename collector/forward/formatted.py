"""Formatting stored events for forwarding: each row decoded once and laid out in its formats' JSON.

    formatter = Formatter(store_location, helpers=1)    # the forward process: one for all destinations
    reads = formatter.get([(agent_id, sequence, data), ...], "ecs")   # [(fields, JSON)], in order
    shared = Formatted(formatter, ("ecs", "ocsf"), size=4 * 500)       # several destinations

Decoding a stored event (`to_mapping`, half of what forwarding an event costs) and laying it out
(`formats.event_json`) is CPU-bound Python, so one process formats at most one core's worth. A
batch of at least POOL_MIN events is cut into chunks: helper processes (`helpers`) are handed
them from the front, at most IN_FLIGHT each at a time, while the calling thread lays them out
from the back. On an idle core forwarding runs up to about twice as fast; a helper that gets no
CPU costs at most its IN_FLIGHT chunks' wait at the end of a batch. Helpers run at a lower
priority (HELPER_NICE) than the collector, so they take only what ingest leaves. A helper that
dies breaks the pool: the batch is formatted here, and so are those of the next
HELPER_RETRY_SECONDS.

Destinations that keep up read the same rows at about the same time: `Formatted` keeps the last
events formatted, and the first destination to reach an event lays it out in every format the
destinations use (one decode); the others take its JSON. Bounded: the oldest entries go first,
and a destination far behind formats what it reads on its own.

What a destination reads of an event beside its JSON is FIELDS (its id, time and host).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from collector import formats
from collector.store.rows import stored_mapping

log = logging.getLogger("exfilguard.collector.forward")

FIELDS = ("event.id", "@timestamp", "host.name")  # what destinations read beside the JSON
POOL_MIN = 200  # a batch this big is shared with the helpers; a smaller one is formatted here
CHUNK = 25  # events a helper takes at a time
IN_FLIGHT = 2  # chunks given to each helper ahead (one to work on, one waiting)
HELPER_NICE = 10  # helpers yield to the collector (ingest) and to the forward process itself
MAX_HELPERS = 3
HELPER_RETRY_SECONDS = 30.0  # after a helper died, batches are formatted here this long

Row = tuple[str, int, bytes]  # agent id, sequence, the stored bytes
Read = tuple[dict[str, Any], bytes]  # an event's FIELDS, and its JSON in one format
Laid = tuple[dict[str, Any], tuple[bytes, ...]]  # an event's FIELDS, and its JSON in each format asked


def lay_out(location: str, rows: Sequence[Row], fmts: tuple[str, ...]) -> list[Laid]:
    """Each row's FIELDS and its JSON in each of `fmts` (what a helper runs; also run here)."""
    out: list[Laid] = []
    for agent_id, sequence, data in rows:
        mapping = stored_mapping(location, agent_id, sequence, data)
        fields = {name: mapping[name] for name in FIELDS if name in mapping}
        out.append((fields, tuple([formats.event_json(fmt, mapping) for fmt in fmts])))
    return out


def default_helpers() -> int:
    """Helper processes for this machine: one fewer than the cores this process may use (at most 3)."""
    return max(0, min(MAX_HELPERS, len(os.sched_getaffinity(0)) - 1))


def _helper_start(parent: int) -> None:
    """In the helper, first: it ends with the forward process (also a killed one), yields CPU."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the forward process died before the line above
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the collector's to handle
    os.nice(HELPER_NICE)


_PR_SET_PDEATHSIG = 1


class Formatter:
    """Lays out batches of stored rows, here or with helper processes too."""

    def __init__(self, location: str, helpers: int = 0) -> None:
        self.location = location
        self.helpers = helpers
        self.conversions = 0  # JSON documents made (an event in two formats counts twice)
        self.helped = 0  # events the helpers laid out
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0

    def start(self) -> None:
        """Start the helpers now (they take a while to import what they run), not at the first big batch."""
        pool = self._started()
        if pool is not None:
            pool.submit(lay_out, self.location, [], ())

    def get(self, rows: Sequence[Row], fmt: str) -> list[Read]:
        """Each row's FIELDS and JSON in `fmt`, in order."""
        return [(fields, docs[0]) for fields, docs in self.lay_out(rows, (fmt,))]

    def lay_out(self, rows: Sequence[Row], fmts: tuple[str, ...]) -> list[Laid]:
        """`lay_out` of the rows, shared with the helpers when the batch is big enough."""
        self.conversions += len(rows) * len(fmts)
        pool = self._started() if len(rows) >= POOL_MIN else None
        if pool is None:
            return lay_out(self.location, rows, fmts)
        chunks = [rows[at : at + CHUNK] for at in range(0, len(rows), CHUNK)]
        parts: dict[int, list[Laid]] = {}
        sent: dict[Future[list[Laid]], int] = {}
        front, back = 0, len(chunks) - 1
        try:
            while front <= back:
                # Each helper has at most IN_FLIGHT chunks (the wait at the end is short)...
                while len(sent) < IN_FLIGHT * self.helpers and front <= back:
                    sent[pool.submit(lay_out, self.location, chunks[front], fmts)] = front
                    front += 1
                if front > back:
                    break
                # ... while this thread takes them from the back.
                parts[back] = lay_out(self.location, chunks[back], fmts)
                back -= 1
                for future in [f for f in sent if f.done()]:
                    n = sent.pop(future)
                    parts[n] = future.result()
                    self.helped += len(chunks[n])
            for future, n in sent.items():
                parts[n] = future.result()
                self.helped += len(chunks[n])
        except (BrokenProcessPool, RuntimeError):  # a helper died, or the pool is shutting down
            self._broken(pool)
            for n, chunk in enumerate(chunks):
                if n not in parts:
                    parts[n] = lay_out(self.location, chunk, fmts)
        return [laid for n in range(len(chunks)) for laid in parts[n]]

    def _started(self) -> ProcessPoolExecutor | None:
        if self.helpers <= 0 or time.monotonic() < self._retry_at:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.helpers,
                    mp_context=get_context("spawn"),  # the forward process has threads: no fork
                    initializer=_helper_start,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def _broken(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
            self._retry_at = time.monotonic() + HELPER_RETRY_SECONDS
        log.warning(
            "forward: a formatting helper process died; formatting without helpers for %.0f s",
            HELPER_RETRY_SECONDS,
        )
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the helpers (idempotent)."""
        with self._lock:
            pool, self._pool, self.helpers = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class Formatted:
    """The last `size` events any destination read: their FIELDS and JSON in every format used."""

    def __init__(self, formatter: Formatter, fmts: Sequence[str], size: int) -> None:
        self.formatter = formatter
        self.formats = tuple(dict.fromkeys(fmts))
        self.size = size
        self._entries: OrderedDict[tuple[str, int], tuple[dict[str, Any], dict[str, bytes]]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()

    @property
    def conversions(self) -> int:
        """JSON documents made (an event in two formats counts twice)."""
        return self.formatter.conversions

    def get(self, rows: Sequence[Row], fmt: str) -> list[Read]:
        """Each row's FIELDS and JSON in `fmt`, made now unless another destination did.

        Made under the lock: the destination that comes second waits for the first's work
        instead of doing it again.
        """
        with self._lock:
            entries = self._entries
            missing = [row for row in rows if (row[0], row[1]) not in entries]
            fmts = self.formats if fmt in self.formats else (fmt,)
            for (agent_id, sequence, _), (fields, docs) in zip(
                missing, self.formatter.lay_out(missing, fmts), strict=True
            ):
                entries[(agent_id, sequence)] = (fields, dict(zip(fmts, docs, strict=True)))
            out: list[Read] = []
            for agent_id, sequence, data in rows:
                fields, by_format = entries[(agent_id, sequence)]
                doc = by_format.get(fmt)
                if doc is None:
                    ((fields, (doc,)),) = self.formatter.lay_out([(agent_id, sequence, data)], (fmt,))
                    by_format[fmt] = doc
                out.append((fields, doc))
            while len(entries) > max(self.size, len(rows)):
                entries.popitem(last=False)
        return out
