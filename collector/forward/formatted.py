"""Formatting stored events for forwarding: each row decoded once and laid out in its formats' JSON.

    formatter = Formatter(store_location, helpers=1)    # the forward process: one for all destinations
    reads = formatter.get([(agent_id, sequence, data), ...], "ecs")   # [(fields, JSON)], in order
    shared = Formatted(formatter, ("ecs", "ocsf"), size=4 * 500)       # several destinations

Decoding a stored event (`to_mapping`, half of what forwarding an event costs) and laying it out
(`formats.event_json`) is CPU-bound Python, so one process formats at most one core's worth. A
batch of at least POOL_MIN events is cut into chunks: helper processes (`helpers`) are handed
them from the front, at most IN_FLIGHT each at a time, while the calling thread lays them out
from the back; an idle core so takes part of the work. At the end of a batch what a helper still
holds is taken back from its end and laid out here while it works on the rest (its answers for
those dropped): a helper that gets no CPU never holds a batch up. Helpers run at a lower
priority (HELPER_NICE) than the collector, so they take only what ingest leaves. Chunks and
answers go through a pipe per helper that the calling thread reads itself between its own
chunks (no thread of this process has to win the GIL to pass an answer on). The first big batch
waits for the helpers to have started (imported what they run). When a helper dies, its chunks
are laid out here, and so are the batches of the next HELPER_RETRY_SECONDS; one that hangs is
sent nothing more.

Destinations that keep up read the same rows at about the same time: `Formatted` keeps the last
events formatted, and the first destination to reach an event lays it out in every format the
destinations use (one decode); the others take its JSON. Bounded: the oldest entries go first,
and a destination far behind formats what it reads on its own.

What a destination reads of an event beside its JSON is FIELDS (its id, time and host). A batch
is laid out in columns (`Laid`: a list per field and per format), not an object per event: at
50,000 events a second each per-event dict or tuple the forward process makes and takes apart
costs a few percent of its core.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from collector import formats
from collector.store.rows import stored_mappings
from common.errors import ExfilGuardError

log = logging.getLogger("exfilguard.collector.forward")

FIELDS = ("event.id", "@timestamp", "host.name")  # what destinations read beside the JSON
POOL_MIN = 200  # a batch this big is shared with the helpers; a smaller one is formatted here
CHUNK = 25  # events a helper takes at a time
IN_FLIGHT = 2  # chunks given to each helper ahead (one to work on, one waiting)
HELPER_NICE = 10  # helpers yield to the collector (ingest) and to the forward process itself
MAX_HELPERS = 3
HELPER_RETRY_SECONDS = 30.0  # after a helper died, batches are formatted here this long
HELPER_START_SECONDS = 10.0  # the first big batch waits this long at most for the helpers to start
ASKED_SECONDS = 5.0  # a format no destination asked for this long is not laid out ahead for it
MAX_CHUNK_BYTES = 16 << 10  # a chunk of bigger rows is laid out here (two on their way fit a pipe)

Row = tuple[str, int, bytes]  # agent id, sequence, the stored bytes


class Laid(NamedTuple):
    """Rows laid out, in columns: each row's FIELDS (id, time, host; None where the event has
    none) and its JSON in each format asked (`docs[i]`: the i-th format's, row by row)."""

    ids: list[str]
    times: list[str | None]
    hosts: list[str | None]
    docs: tuple[list[bytes], ...]

    @classmethod
    def joined(cls, parts: Sequence[Laid], width: int) -> Laid:
        """The parts one after the other (`width`: the formats each has)."""
        if len(parts) == 1:
            return parts[0]
        out = cls([], [], [], tuple([] for _ in range(width)))
        for part in parts:
            out.ids.extend(part.ids)
            out.times.extend(part.times)
            out.hosts.extend(part.hosts)
            for docs, more in zip(out.docs, part.docs, strict=True):
                docs.extend(more)
        return out


def lay_out(location: str, rows: Sequence[Row], fmts: tuple[str, ...]) -> Laid:
    """The rows' FIELDS and JSON in each of `fmts` (what a helper runs; also run here)."""
    mappings = stored_mappings(location, rows)
    return Laid(
        [m.get("event.id", "") for m in mappings],
        [m.get("@timestamp") for m in mappings],
        [m.get("host.name") for m in mappings],
        # each format's function looked up once a batch, not per event
        tuple([json(m) for m in mappings] for json in map(formats.event_json_of, fmts)),
    )


def default_helpers() -> int:
    """Helper processes for this machine: one fewer than the cores this process may use (at most 3)."""
    return max(0, min(MAX_HELPERS, len(os.sched_getaffinity(0)) - 1))


def _helper_start(parent: int, nice: int) -> None:
    """In the helper, first: it ends with the forward process (also a killed one), yields CPU."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the forward process died before the line above
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the collector's to handle
    os.nice(nice)


def _helper_main(conn: Connection, parent: int, nice: int, location: str) -> None:
    """A helper process: lays out each chunk it is sent and sends it back, until its pipe closes."""
    _helper_start(parent, nice)
    while True:
        try:
            fmts, rows = conn.recv()
            conn.send(tuple(lay_out(location, rows, fmts)))
        except (EOFError, OSError):  # the forward process closed the pipe (or died)
            return


_PR_SET_PDEATHSIG = 1


class HelperGone(ExfilGuardError):
    """A helper process died, or did not answer in time."""


class _Helper:
    """One helper process and its pipe: chunks go down, their layouts come back in the same order."""

    def __init__(self, location: str) -> None:
        context = get_context("spawn")  # the forward process has threads: no fork
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_helper_main, args=(theirs, os.getpid(), HELPER_NICE, location), daemon=True
        )
        self.process.start()
        theirs.close()
        # What it was sent, in order (its answers come in that order): the chunk's number in this
        # batch, or None for an answer to drop (a chunk laid out here meanwhile, its start-up check).
        self.sent: deque[int | None] = deque()
        self.up = False  # it answered the empty chunk sent now: it has imported what it runs
        self.send(None, (), [])
        self.answered = 0  # events of this batch it laid out

    def busy(self) -> int:
        return len(self.sent)

    def holds(self) -> bool:
        """True while it has chunks of this batch to answer."""
        return any(n is not None for n in self.sent)

    def send(self, n: int | None, fmts: tuple[str, ...], chunk: Sequence[Row]) -> None:
        try:
            self.conn.send((fmts, chunk))
        except OSError as exc:
            raise HelperGone(str(exc)) from exc
        self.sent.append(n)

    def answers(self, parts: dict[int, Laid], wait: float = 0.0) -> bool:
        """Take the answers that came, waiting up to `wait` for the first; False if none came."""
        came = False
        try:
            while self.sent and self.conn.poll(0.0 if came else wait):
                answer = Laid(*self.conn.recv())
                came = True
                n = self.sent.popleft()
                if n is not None:
                    parts[n] = answer
                    self.answered += len(answer.ids)
        except (EOFError, OSError) as exc:
            raise HelperGone(str(exc)) from exc
        return came

    def take_back(self) -> int:
        """The last chunk of this batch it holds, to be laid out here (its answer will be dropped)."""
        for at in range(len(self.sent) - 1, -1, -1):
            n = self.sent[at]
            if n is not None:
                self.sent[at] = None
                return n
        raise ValueError("it holds no chunk of this batch")

    def close(self) -> None:
        self.conn.close()  # its recv ends: it exits
        self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)


class Formatter:
    """Lays out batches of stored rows, here or with helper processes too."""

    def __init__(self, location: str, helpers: int = 0) -> None:
        self.location = location
        self.helpers = helpers
        self.conversions = 0  # JSON documents made (an event in two formats counts twice)
        self.helped = 0  # events the helpers laid out
        self._started: list[_Helper] | None = None
        self._lock = threading.Lock()  # one batch at a time uses the helpers
        self._retry_at = 0.0

    def start(self) -> None:
        """Start the helpers now (they take a while to import what they run), not at the first big batch."""
        with self._lock:
            self._helpers()

    def get(self, rows: Sequence[Row], fmt: str, destination: str = "") -> Laid:
        """The rows' FIELDS and JSON in `fmt` (`docs[0]`), in order (`destination`: who asks,
        for Formatted's sake)."""
        return self.lay_out(rows, (fmt,))

    def lay_out(self, rows: Sequence[Row], fmts: tuple[str, ...]) -> Laid:
        """`lay_out` of the rows, shared with the helpers when the batch is big enough (the same
        result, in the same order, as laying them out here)."""
        self.conversions += len(rows) * len(fmts)
        if len(rows) < POOL_MIN or not self._lock.acquire(blocking=False):
            return lay_out(self.location, rows, fmts)
        try:
            helpers = self._helpers()
            if not helpers:
                return lay_out(self.location, rows, fmts)
            return self._shared(helpers, rows, fmts)
        finally:
            self._lock.release()

    def _shared(self, helpers: list[_Helper], rows: Sequence[Row], fmts: tuple[str, ...]) -> Laid:
        chunks = [rows[at : at + CHUNK] for at in range(0, len(rows), CHUNK)]
        parts: dict[int, Laid] = {}
        front, back = 0, len(chunks) - 1
        for helper in helpers:
            helper.answered = 0
        try:
            for helper in helpers:  # the first big batch waits for them to start (once)
                if not helper.up:
                    if not helper.answers(parts, HELPER_START_SECONDS):
                        raise HelperGone(f"not started in {HELPER_START_SECONDS:.0f} s")
                    helper.up = True
            while front <= back:
                # Each helper is sent chunks from the front, at most IN_FLIGHT at a time...
                for helper in helpers:
                    helper.answers(parts)
                    while helper.busy() < IN_FLIGHT and front <= back:
                        if sum(len(data) for _, _, data in chunks[front]) > MAX_CHUNK_BYTES:
                            break  # big rows: laid out here (what is on its way stays below a pipe's size)
                        helper.send(front, fmts, chunks[front])
                        front += 1
                if front > back:
                    break
                # ... while this thread lays them out from the back.
                parts[back] = lay_out(self.location, chunks[back], fmts)
                back -= 1
            # What a helper still holds is taken back from its end, one chunk at a time, while it
            # works on the first (never waited for: a helper short of CPU must not hold a batch up).
            for helper in helpers:
                while helper.holds():
                    if helper.answers(parts):
                        continue
                    n = helper.take_back()
                    parts[n] = lay_out(self.location, chunks[n], fmts)
        except HelperGone as exc:
            self._broken(str(exc))
        self.helped += sum(helper.answered for helper in helpers)
        for n, chunk in enumerate(chunks):
            if n not in parts:
                parts[n] = lay_out(self.location, chunk, fmts)
        return Laid.joined([parts[n] for n in range(len(chunks))], len(fmts))

    def _helpers(self) -> list[_Helper]:
        """The helper processes, started if they are not (none while they are held back)."""
        if self._started is None and self.helpers > 0 and time.monotonic() >= self._retry_at:
            self._started = [_Helper(self.location) for _ in range(self.helpers)]
        return self._started or []

    def _broken(self, why: str) -> None:
        helpers, self._started = self._started or [], None
        self._retry_at = time.monotonic() + HELPER_RETRY_SECONDS
        log.warning(
            "forward: a formatting helper process failed (%s); formatting without helpers for %.0f s",
            why,
            HELPER_RETRY_SECONDS,
        )
        for helper in helpers:
            helper.close()

    def close(self) -> None:
        """Stop the helpers (idempotent)."""
        with self._lock:
            helpers, self._started, self.helpers = self._started or [], None, 0
        for helper in helpers:
            helper.close()


class Formatted:
    """The last `size` events any destination read: their FIELDS and JSON in every format in use
    (asked for within ASKED_SECONDS by a destination not given up since: `away`, its delivery
    failed and it waits out its backoff). An away destination costs the others nothing; its
    format is laid out again once it asks. While one destination alone asks, there is nothing to
    share: its rows are laid out for it and nothing is kept (no per-event bookkeeping)."""

    def __init__(self, formatter: Formatter, destinations: Mapping[str, str], size: int) -> None:
        """`destinations`: each destination's name and format (all taken to have just asked)."""
        self.formatter = formatter
        self.formats = tuple(dict.fromkeys(destinations.values()))
        self._slots = {fmt: _FIRST_DOC + n for n, fmt in enumerate(self.formats)}
        self.size = size
        # (agent id, sequence) -> [event id, time, host, its JSON in each of formats (None: not yet)]
        self._entries: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()
        # destination -> (its format, when it last asked); at the start all are taken to keep up
        started = time.monotonic()
        self._asked = {name: (fmt, started) for name, fmt in destinations.items()}
        self._lock = threading.Lock()

    @property
    def conversions(self) -> int:
        """JSON documents made (an event in two formats counts twice)."""
        return self.formatter.conversions

    def get(self, rows: Sequence[Row], fmt: str, destination: str = "") -> Laid:
        """The rows' FIELDS and JSON in `fmt` (`docs[0]`), made now unless another destination did.

        Made under the lock: the destination that comes second waits for the first's work
        instead of doing it again.
        """
        with self._lock:
            now = time.monotonic()
            self._asked[destination] = (fmt, now)
            recent = now - ASKED_SECONDS
            sharing = [f for d, (f, at) in self._asked.items() if d != destination and at > recent]
            slot = self._slots.get(fmt)
            if not sharing or slot is None:
                self._entries.clear()  # what was kept is for destinations that stopped asking
                return self.formatter.get(rows, fmt)
            entries = self._entries
            keys = [(row[0], row[1]) for row in rows]  # made once: this runs for every event
            keyed = list(zip(rows, keys, strict=True))
            self._add([row for row, key in keyed if key not in entries], (fmt, *dict.fromkeys(sharing)))
            self._add([row for row, key in keyed if entries[key][slot] is None], (fmt,))
            got = list(map(entries.__getitem__, keys))
            for _ in range(len(entries) - max(self.size, len(rows))):
                entries.popitem(last=False)
        return Laid([e[0] for e in got], [e[1] for e in got], [e[2] for e in got], ([e[slot] for e in got],))

    def away(self, destination: str) -> None:
        """The destination failed a delivery: lay its format out ahead no more until it asks."""
        with self._lock:
            self._asked.pop(destination, None)

    def _add(self, rows: Sequence[Row], fmts: tuple[str, ...]) -> None:
        """Lay the rows out in `fmts` into the entries (kept ones gain the formats)."""
        fmts = tuple(f for f in dict.fromkeys(fmts) if f in self._slots)
        if not rows or not fmts:
            return
        entries = self._entries
        laid = self.formatter.lay_out(rows, fmts)
        slots = [self._slots[f] for f in fmts]
        blank = [None] * len(self.formats)
        for n, (agent_id, sequence, _) in enumerate(rows):
            entry = entries.get((agent_id, sequence))
            if entry is None:
                entry = entries[(agent_id, sequence)] = [laid.ids[n], laid.times[n], laid.hosts[n], *blank]
            for slot, docs in zip(slots, laid.docs, strict=True):
                entry[slot] = docs[n]


_FIRST_DOC = 3  # an entry's first JSON, after the event's FIELDS
