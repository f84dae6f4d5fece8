"""The policy process: policies are evaluated in a process of their own, off the collector's event loop.

Evaluating the pack is CPU-bound Python; on the collector's event loop it held the GIL that
gRPC, ingest and acks need, so every event cost the ingest path its evaluation. As a child
process (like the sealer) it runs on another core while the collector stores and acks.

    collector (event loop)                         policy process (python -m collector.policy.process)
      store writer: batch committed
        -> PolicyProcess.on_stored(events)  ==pipe==>  PolicyListener: engine, behaviour, suppression,
      agent.silent -> on_events(mappings)   ==pipe==>    alert store writes, sinks, hot reload, SIGHUP
      /metrics <- stats()                   <==pipe==  figures twice a second

What crosses the pipe (the child's stdin) is the stored events' protobuf bytes, framed as one
`EventBatch` per acknowledged batch: the collector converts nothing, the child reads only the
fields its policies look at (protos.events.EventView). The child's reports come back on a pipe
of their own (its stdout carries its JSON logs and the stdout sink's alerts).

Order and flow: frames go in the order batches are acknowledged; a child that falls behind fills
the pipe, and the next commit waits for room (bounded memory; the agents' own windows then slow them).
A child that dies is restarted within a second; events sent to it and not yet evaluated are
counted (`unevaluated`) and logged, and the new child rebuilds its windows from the store
(`policy_rebuild_hours`), as at every start. While no child runs, nothing waits on it: ingest
never stops for the policies. A broken policy set at start is the collector's own failure (the
child exits before it is ready and the collector exits 1), as before.

On PostgreSQL (several collectors may share it) no events go down the pipe, only agent.silent:
one policy process of the fleet leads and evaluates the shared event log (collector/policy/fleet.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import signal
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from collector.child import ChildProcess, child_start, report
from collector.config import CollectorConfig
from collector.store import is_postgres
from common import logs
from common.errors import ExfilGuardError
from protos import exfilguard_pb2 as pb
from protos.events import EventView

log = logging.getLogger("exfilguard.collector.policy")

# A frame: kind (1 byte), payload length (4 bytes little-endian), payload.
_HEADER = struct.Struct("<cI")
CONFIG, EVENTS, MAPPINGS = b"C", b"E", b"M"  # collector -> policy process
READY, STATS, FAILED = b"R", b"S", b"F"  # policy process -> collector
MAX_FRAME = 256 << 20  # an EventBatch is bounded by the collector's max_message_bytes
_PIPE_BUFFER = 1 << 20  # queued to the child before a commit waits (~3,000 events); the pipe's size too
STATS_SECONDS = 0.5
_STOP_SECONDS = 30.0  # a clean stop lets the child evaluate what it was sent, flush and drain its sinks
_TERM_GRACE_SECONDS = 10.0  # SIGTERM on the child alone (systemd stops the whole group): finish soon


class PolicyProcessError(ExfilGuardError):
    """The policy process could not start (a broken policy set, an unreadable store...)."""


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame of the pipe protocol."""
    return _HEADER.pack(kind, len(payload)) + payload


def events_payload(serialized: Sequence[bytes]) -> bytes:
    """The bytes of an `EventBatch` holding the events serialized in `serialized` (field 1,
    length-delimited, repeated)."""
    parts = []
    heads = _HEADS
    for data in serialized:
        size = len(data)
        parts.append(heads[size] if size < _SHORT else b"\x0a" + _varint(size))
        parts.append(data)
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SHORT = 1 << 14  # events up to 16 KiB (nearly all): their field head is looked up, not encoded
_HEADS = [b"\x0a" + _varint(n) for n in range(_SHORT)]


def encode_stats(stats: dict[str, Any]) -> bytes:
    """The listener's stats as JSON (its (policy, severity) keys become lists)."""
    body = dict(stats)
    body["alerts_by_policy"] = [[p, s, n] for (p, s), n in stats.get("alerts_by_policy", {}).items()]
    return json.dumps(body, default=str).encode()


def decode_stats(data: bytes) -> dict[str, Any]:
    """What `encode_stats` made, back as the listener's stats()."""
    body: dict[str, Any] = json.loads(data)
    body["alerts_by_policy"] = {(p, s): n for p, s, n in body.get("alerts_by_policy", [])}
    return body


# ------------------------------------------------------------------ the collector's side


class PolicyProcess(ChildProcess):
    """The collector's event listener that hands stored events to the policy process.

    `open()` starts the child and waits until its policy set is loaded and its windows rebuilt;
    `aclose()` ends its input and waits for it to finish. It restarts a child that dies.
    """

    module = "collector.policy.process"
    what = "policy process"
    stop_seconds = _STOP_SECONDS
    report_limit = MAX_FRAME
    error = PolicyProcessError
    logger = log.name

    def __init__(self, config: CollectorConfig) -> None:
        super().__init__(config)
        self.unevaluated = 0  # events sent to a child that died before evaluating them, or with none running
        self.reads_store = is_postgres(config.store)
        self._stats: dict[str, Any] = {}
        self._sent = 0  # events sent to the running child (its reports say how many it received)
        self._lost_logged_at = 0.0

    # ---------------------------------------------------------------- the child's protocol

    def spawned(self, process: asyncio.subprocess.Process) -> None:
        """Bound what may queue to it; its figures start afresh."""
        assert process.stdin is not None
        transport: Any = process.stdin.transport
        transport.set_write_buffer_limits(high=_PIPE_BUFFER)
        # The pipe itself as large: a 64 KiB pipe took a batch's frame in many writes, each a wake-up
        # of the event loop (8% of the collector's busy time in bench.ingest). Beyond the system's
        # /proc/sys/fs/pipe-max-size it stays as it is.
        with contextlib.suppress(OSError):
            fcntl.fcntl(transport.get_extra_info("pipe").fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BUFFER)
        self._sent = 0
        self._stats = {}

    def first_input(self) -> bytes:
        """The config frame."""
        return frame(CONFIG, self.config.model_dump_json().encode())

    async def read_reports(self, reader: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        """Figures, and whether its policy set loaded."""
        while True:
            kind, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            payload = await reader.readexactly(length)
            if kind == STATS:
                self._stats = decode_stats(payload)
            elif kind == READY and not ready.done():
                ready.set_result(None)
            elif kind == FAILED and not ready.done():
                ready.set_exception(PolicyProcessError(payload.decode(errors="replace")))

    def exited(self, code: int) -> None:
        """Count what it was sent and did not evaluate."""
        lost = max(0, self._sent - int(self._stats.get("received", 0)))
        self.unevaluated += lost
        self.log.error(
            "policy process exited with %s; restarting it (up to %d events sent to it may not have "
            "been evaluated; the new one rebuilds its windows from the store)",
            code,
            lost,
            extra={"exit_code": code, "unevaluated": lost},
        )

    # ---------------------------------------------------------------- the listener

    async def on_stored(self, events: Sequence[pb.Event], data: Sequence[bytes]) -> None:
        """Send newly stored events (their bytes as stored: nothing is serialized again); waits
        only while the child's pipe is full. On PostgreSQL nothing is sent: the fleet's evaluator
        reads the events from the store (collector/policy/fleet.py)."""
        if self.reads_store:
            return
        await self._send(frame(EVENTS, events_payload(data)), len(data))

    async def on_events(self, mappings: list[dict[str, Any]]) -> None:
        """Send collector-made events (agent.silent) as their mappings."""
        await self._send(frame(MAPPINGS, json.dumps(mappings).encode()), len(mappings))

    async def _send(self, data: bytes, count: int) -> None:
        process = self._process
        stdin = process.stdin if process is not None else None
        if process is None or stdin is None or process.returncode is not None or stdin.is_closing():
            self._lost(count)
            return
        self._sent += count
        try:
            stdin.write(data)
            await stdin.drain()
        except ConnectionError:
            self._lost(count)

    def _lost(self, count: int) -> None:
        self.unevaluated += count
        now = time.monotonic()
        if now - self._lost_logged_at >= 60.0:
            self._lost_logged_at = now
            log.error(
                "no policy process running: %d event(s) not evaluated so far", self.unevaluated,
                extra={"unevaluated": self.unevaluated},
            )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """The child's latest figures (at most STATS_SECONDS old), plus restarts and unevaluated events."""
        if not self._stats:
            return {}
        return {**self._stats, "restarts": self.restarts, "unevaluated": self.unevaluated}

    def request_reload(self) -> None:
        """Reload the policy files (the collector's SIGHUP, passed on)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)


# ------------------------------------------------------------------ the policy process itself


class _Reports:
    """Writes frames to the collector (blocking writes of a few hundred bytes, twice a second)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: bytes, payload: bytes) -> None:
        report(self.fd, frame(kind, payload))


async def serve(report_fd: int) -> int:
    """Read the config, start the listener, evaluate what arrives until the input ends; the exit code."""
    from collector.policy.errors import PolicySetError
    from collector.policy.listener import PolicyListener
    from collector.store import StoreError, open_store

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_FRAME)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    reports = _Reports(report_fd)
    kind, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if kind != CONFIG:
        log.error("policy process: the first frame must be the config, got %r", kind)
        return 2
    config = CollectorConfig.model_validate_json(await reader.readexactly(length))
    logs.configure(config.log_level)
    try:
        store = open_store(config.store)
    except StoreError as exc:  # names the store, never a password
        log.error("policy process cannot open the store: %s", exc)
        reports.send(FAILED, f"policy process: {exc}".encode())
        return 1
    fleet = is_postgres(config.store)  # several collectors may share it: one evaluator for all of them
    try:
        try:
            # The fleet evaluator rebuilds windows itself, from the store up to its cursors.
            own = config.model_copy(update={"policy_rebuild_hours": 0}) if fleet else config
            listener = PolicyListener.from_config(own, store)
            if not fleet:  # on PostgreSQL the fleet's evaluator resumes when it takes the lead
                listener.resume()
        except PolicySetError as exc:
            for problem in (p for p in exc.problems if p.severity == "error"):
                log.error("policy problem: %s", problem, extra={"code": problem.code, "path": problem.path})
            reports.send(FAILED, str(exc).encode())  # the collector's start fails with this message
            return 2
        reports.send(READY, b"{}")
        # What start-up made (modules, the config, the compiled set, windows rebuilt from the store)
        # lives as long as the process: frozen, the full collections that growing window and
        # suppression state brings about no longer walk it each time.
        gc.freeze()
        stop = loop.create_future()

        def _stop() -> None:
            if not stop.done():
                stop.set_result(None)

        def _terminated() -> None:  # SIGTERM (systemd stops the group): finish what is queued, shortly
            loop.call_later(_TERM_GRACE_SECONDS, _stop)

        loop.add_signal_handler(signal.SIGTERM, _terminated)
        received = [0]  # events taken off the pipe (the collector counts what a dead child never got to)
        evaluator = None
        if fleet:
            from collector.policy.fleet import FleetEvaluator

            evaluator = FleetEvaluator(config, listener)
            evaluator.start()
        reporter = asyncio.create_task(_report_forever(listener, evaluator, reports, received))
        work = asyncio.create_task(_evaluate_forever(reader, listener, evaluator, received))
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        if evaluator is not None:
            await evaluator.aclose()  # its last step committed, the lead given up
        await listener.aclose()  # follow-ups of folded repeats, pending alert writes, sinks drained
        reports.send(STATS, encode_stats(_stats(listener, evaluator, received)))
    finally:
        store.close()
    return 0


async def _evaluate_forever(
    reader: asyncio.StreamReader, listener: Any, evaluator: Any, received: list[int]
) -> None:
    while True:
        try:
            head = await reader.readexactly(_HEADER.size)
        except asyncio.IncompleteReadError:
            return  # the collector closed our input: stopping
        kind, length = _HEADER.unpack(head)
        payload = await reader.readexactly(length)
        if kind == EVENTS:
            views = [EventView(event) for event in pb.EventBatch.FromString(payload).events]
            received[0] += len(views)
            await listener.on_events(views)
        elif kind == MAPPINGS:
            mappings = json.loads(payload)
            received[0] += len(mappings)
            if evaluator is None:
                await listener.on_events(mappings)
            else:
                evaluator.on_mappings(mappings)
        else:
            log.error("policy process: unknown frame kind %r (%d bytes) skipped", kind, length)


def _stats(listener: Any, evaluator: Any, received: list[int]) -> dict[str, Any]:
    fleet = evaluator.stats() if evaluator is not None else {}
    return {**listener.stats(), **fleet, "received": received[0]}


async def _report_forever(listener: Any, evaluator: Any, reports: _Reports, received: list[int]) -> None:
    while True:
        reports.send(STATS, encode_stats(_stats(listener, evaluator, received)))
        await asyncio.sleep(STATS_SECONDS)


def main() -> int:
    """Entry point of `python -m collector.policy.process` (started by the collector, not by admins)."""
    return asyncio.run(serve(child_start("collector.policy.process", __doc__)))


if __name__ == "__main__":
    sys.exit(main())
