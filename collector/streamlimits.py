"""How many agent streams the collector holds, and from whom: slots before and after the hello.

A stream that has not said hello yet holds a *pending* slot: there are at most
`max_pending_hellos` of them, at most `max_pending_hellos_per_peer` from one address, and each
lasts at most `hello_timeout_seconds`. Only after a valid hello does a stream take one of the
`max_streams` slots (and, if `max_streams_per_peer` is set, one of its address's). So idle or
slow connections can never take the places of real agents.

`IdleStreams` ends a stream that sent nothing, not even a heartbeat, for `idle_stream_seconds`:
one sweep over every open stream a few times per limit, so an idle stream costs no timer and no
wake-up of its own (ten thousand heartbeating agents would otherwise re-arm a timer each time).

`RefusalLog` keeps what any peer can provoke (refusals at WARNING, a hello's alarming claims at
ERROR) from flooding the log: a few lines a second, then one line saying how many were not logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamLimits:
    """The limits of collector.yaml that govern streams (see docs/config.md)."""

    max_streams: int = 10_000
    max_streams_per_peer: int = 0  # 0: no cap (agents behind one NAT address share it)
    max_pending_hellos: int = 1_000
    max_pending_hellos_per_peer: int = 64
    hello_timeout_seconds: float = 10.0
    idle_stream_seconds: float = 900.0  # 0: never close an idle stream


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.7:5123", "ipv6:[::1]:5123", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")] if "]" in rest else rest
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer


class Slots:
    """Counts of open streams, in total and per peer address."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total = total
        self.per_peer = per_peer  # 0: no per-peer cap
        self.open = 0
        self._by_peer: collections.Counter[str] = collections.Counter()

    def refusal(self, peer: str) -> str | None:
        """Why one more stream from `peer` is refused, or None."""
        if self.open >= self.total:
            return f"{self.open} open (limit {self.total})"
        if self.per_peer and self._by_peer[peer] >= self.per_peer:
            return f"{self._by_peer[peer]} open from {peer} (limit {self.per_peer} per address)"
        return None

    def take(self, peer: str) -> None:
        """Count one more stream of `peer`."""
        self.open += 1
        self._by_peer[peer] += 1

    def give_back(self, peer: str) -> None:
        """A stream of `peer` ended (or moved on)."""
        self.open -= 1
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]

    def of(self, peer: str) -> int:
        """Streams open from `peer`."""
        return self._by_peer.get(peer, 0)


_SWEEP_SECONDS = 30.0  # at most this long between two looks: an idle stream ends within this of its limit


class StreamWatch:
    """One stream watched by `IdleStreams`: the task serving it, when it last spoke, why it is ending."""

    __slots__ = ("ending", "heard", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.heard = time.monotonic()  # set by the serving task at every message
        self.ending = ""  # why `end` cancelled the task ("" while it runs)

    def end(self, why: str) -> None:
        """End the stream: cancel its serving task, which reads `ending` to say why."""
        if not self.ending:
            self.ending = why
            self.task.cancel()


class IdleStreams:
    """Ends watched streams quiet for `idle_seconds` (0: never), from one sweep task.

    The sweep runs only while some stream is watched, every quarter of the limit (at most
    every 30 s), so a quiet stream ends between `idle_seconds` and that much later.
    """

    IDLE = "idle"

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._watched: set[StreamWatch] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self) -> StreamWatch:
        """Watch the stream the current task serves, until `forget`."""
        task = asyncio.current_task()
        assert task is not None, "called from a task serving a stream"
        watched = StreamWatch(task)
        self._watched.add(watched)
        if self.idle_seconds and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="idle-streams")
        return watched

    def forget(self, watched: StreamWatch) -> None:
        """The stream ended."""
        self._watched.discard(watched)

    async def _sweep(self) -> None:
        interval = min(self.idle_seconds / 4, _SWEEP_SECONDS)
        try:
            while self._watched:
                await asyncio.sleep(interval)
                quiet_since = time.monotonic() - self.idle_seconds
                for watched in [w for w in self._watched if w.heard < quiet_since]:
                    watched.end(self.IDLE)
        finally:
            self._sweeper = None  # the next watched stream starts another


class RefusalLog:
    """Log lines at `level`, at most `per_second` of them; the rest are counted and summed up."""

    def __init__(self, log: logging.Logger, per_second: int = 10, level: int = logging.WARNING) -> None:
        self._log = log
        self._level = level
        self._per_second = per_second
        self._window = 0
        self._logged = 0
        self._suppressed = 0

    def log(self, message: str, *args: object, extra: dict[str, object] | None = None) -> None:
        """Log one line, unless this second's allowance is spent."""
        now = int(time.monotonic())
        if now != self._window:
            if self._suppressed:
                self._log.log(
                    self._level,
                    "%d more such lines were not logged (more than %d a second)",
                    self._suppressed,
                    self._per_second,
                    extra={"suppressed": self._suppressed},
                )
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged >= self._per_second:
            self._suppressed += 1
            return
        self._logged += 1
        self._log.log(self._level, message, *args, extra=extra)
