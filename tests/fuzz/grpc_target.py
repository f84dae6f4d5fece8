"""The 'grpc' fuzz kind: fuzzed streams against a real collector process, with a well-behaved agent alongside.

    target = GrpcTarget(directory); target.start()
    outcome = target.send(stream)        # one FuzzStream over one real gRPC stream (plaintext loopback)
    problems = outcome.problems          # empty when the collector answered as it must
    figures = target.finish()            # end-of-run checks; figures for bench.fuzz

What the collector must do with every input: answer OK (everything acknowledged), or
INVALID_ARGUMENT (bad input), or RESOURCE_EXHAUSTED (a size limit) — never another status,
never no answer within HANG_SECONDS (a hang), never die (a crash). At the end: no traceback
and no ERROR line in its log (but the two alarms a hello may rightly raise), every stored row
readable without `exfilguard.invalid`, everything acknowledged still stored, and the honest
agent's events stored exactly once each, none lost.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from collector.store import EventFilter
from collector.store.sqlite import SqliteStore
from protos import exfilguard_pb2 as pb
from protos.events import INVALID
from tests.fuzz.agent_messages import FuzzStream, raw_streams, seed_streams, structured_streams
from tests.helpers import (
    REPO,
    AgentStream,
    CollectorProcess,
    make_events,
    start_collector,
    write_collector_config,
)

HANG_SECONDS = 10.0
ALLOWED = frozenset(
    {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
SERVER_DEADLINES = ("no hello", "nothing received")  # the collector's own limits, not a hang
# ERROR lines a hello may rightly cause (the agent claims more than the store holds), and the
# line counting those the collector left out (at most ten a second).
EXPECTED_ERRORS = (
    "agent was acknowledged up to", "agent's next sequence is", "more such lines were not logged"
)
_METHOD = "/exfilguard.v1.Ingest/Stream"
MiB = 1 << 20
ROUND_EXAMPLES = 100  # a round overruns the budget by at most this many inputs


@dataclass
class Outcome:
    """How the collector answered one input."""

    code: grpc.StatusCode
    details: str
    acks: list[int]
    problems: list[str] = field(default_factory=list)


@dataclass
class Figures:
    """What one run found (the JSON of bench.fuzz's 'grpc' kind)."""

    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    unexpected_status: int = 0
    refused: int = 0
    accepted: int = 0
    tracebacks: int = 0
    error_lines: int = 0
    invalid_stored: int = 0
    acked_lost: int = 0
    honest_events: int = 0
    honest_lost: int = 0
    honest_duplicated: int = 0
    fuzzer_errors: int = 0  # the strategies themselves failed (a bug in tests/fuzz, not the collector)
    honest_interrupted: int = 0  # its stream ended or an ack took longer than HANG_SECONDS
    collector_rss_mib: float = 0.0
    collector_rss_ratio: float = 0.0  # against its RSS before the first input
    samples: list[str] = field(default_factory=list)  # the first few problems, for the report

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values."""
        return {k: v for k, v in self.__dict__.items()}

    @property
    def clean(self) -> bool:
        """True when the run found nothing wrong."""
        return not (
            self.crashes or self.hangs or self.unexpected_status or self.tracebacks or self.error_lines
            or self.invalid_stored or self.acked_lost or self.honest_lost or self.honest_duplicated
            or self.honest_interrupted or self.fuzzer_errors
        )


class HonestAgent:
    """A well-behaved agent streaming batches beside the fuzzer; it must lose and duplicate nothing."""

    def __init__(self, address: str, agent_id: str = "honest-agent") -> None:
        self.address = address
        self.agent_id = agent_id
        self.acked = 0
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="honest-agent", daemon=True)

    def start(self) -> None:
        """Start streaming on a thread of its own."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with AgentStream(self.address, self.agent_id) as stream:
                    self.acked = stream.ack()  # what the collector holds: resend from there
                    self.sent = self.acked
                    while not self._stop.is_set():
                        first = self.sent + 1
                        stream.send_events(make_events(self.agent_id, first, first + 19))
                        self.sent = first + 19
                        self.acked = stream.ack(timeout=HANG_SECONDS)
                        self._stop.wait(0.1)  # ~200 events/s: an agent, not a load test
            except (grpc.RpcError, EOFError, queue.Empty) as exc:  # Empty: no ack within HANG_SECONDS
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.2)

    def stop(self) -> None:
        """Stop after the current batch's ack."""
        self._stop.set()
        self._thread.join(HANG_SECONDS * 2)


class GrpcTarget:
    """A collector process (shipped policies, SQLite store) under fuzzing, and the honest agent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.figures = Figures()
        self.collector: CollectorProcess | None = None
        self.honest: HonestAgent | None = None
        self._channel: grpc.Channel | None = None
        self._raw: Any = None
        self._acked: dict[str, int] = {}
        self._rss_start = 0
        self._generation = 0

    @property
    def store_path(self) -> Path:
        """The collector's SQLite store."""
        return self.directory / "collector.db"

    def start(self) -> None:
        """Start the collector (and the honest agent once)."""
        config = write_collector_config(
            self.directory,
            policies=[str(REPO / "policies")],
            max_message_bytes=256 << 10,
            log_level="info",
        )
        self.collector = start_collector(config, timeout=60)
        self._channel = grpc.insecure_channel(self.collector.address)
        self._raw = self._channel.stream_stream(_METHOD)  # bytes in, bytes out: the input as it is
        self._rss_start = psutil.Process(self.collector.pid).memory_info().rss
        if self.honest is None:
            self.honest = HonestAgent(self.collector.address)
            self.honest.start()

    def rss_mib(self) -> float:
        """The collector's resident memory now."""
        assert self.collector is not None
        try:
            return psutil.Process(self.collector.pid).memory_info().rss / MiB
        except psutil.NoSuchProcess:
            return 0.0

    def send(self, stream: FuzzStream) -> Outcome:
        """One input over one stream; counts it; `problems` says what the collector got wrong."""
        assert self.collector is not None and self._raw is not None
        self.figures.inputs += 1
        acks: list[int] = []
        try:
            for reply in self._raw(iter(stream.messages), timeout=HANG_SECONDS):
                message = pb.CollectorMessage.FromString(reply)
                if message.WhichOneof("body") == "ack":
                    acks.append(message.ack.sequence)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        outcome = Outcome(code, details, acks)
        if acks:
            self._acked[stream.agent_id] = max(self._acked.get(stream.agent_id, 0), acks[-1])
        if self.collector.process.poll() is not None:
            self.figures.crashes += 1
            outcome.problems.append(f"collector died (exit {self.collector.process.returncode})")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and not details.startswith(SERVER_DEADLINES):
            self.figures.hangs += 1
            outcome.problems.append(f"no answer within {HANG_SECONDS:g} s")
        elif code not in ALLOWED:
            self.figures.unexpected_status += 1
            outcome.problems.append(f"status {code.name}: {details}")
        elif code == grpc.StatusCode.OK:
            self.figures.accepted += 1
        else:
            self.figures.refused += 1
        if outcome.problems and len(self.figures.samples) < 10:
            self.figures.samples.append(f"{stream.family} {stream.messages!r}: {'; '.join(outcome.problems)}")
        return outcome

    def restart_after_crash(self) -> None:
        """Bench runs go on after a crash: a fresh collector on a fresh store."""
        self.close()
        self._generation += 1
        self.directory = self.directory.parent / f"{self.directory.name}-{self._generation}"
        self._acked.clear()
        if self.honest is not None:
            self.honest.stop()
            self.honest = None
        self.start()

    def finish(self) -> Figures:
        """Stop the honest agent and the collector, then check the log and the store; the figures."""
        figures = self.figures
        figures.collector_rss_mib = round(self.rss_mib(), 1)
        figures.collector_rss_ratio = round(figures.collector_rss_mib * MiB / max(1, self._rss_start), 2)
        honest = self.honest
        if honest is not None:
            honest.stop()
        assert self.collector is not None
        code = self.collector.stop(timeout=60)
        if code != 0:
            figures.crashes += 1
            figures.samples.append(f"collector exit code {code} at stop")
        self.close()
        self._check_log(self.collector.log())
        self._check_store(honest)
        return figures

    def close(self) -> None:
        """Drop the channel (and kill the collector if it still runs)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.collector is not None and self.collector.process.poll() is None:
            self.collector.kill()

    def _check_log(self, text: str) -> None:
        figures = self.figures
        figures.tracebacks = text.count("Traceback (most recent call last)")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message = str(record.get("msg", ""))
            expected = any(e in message for e in EXPECTED_ERRORS)
            if record.get("level") in ("error", "critical") and not expected:
                figures.error_lines += 1
                if len(figures.samples) < 10:
                    figures.samples.append(f"log: {line[:300]}")
        if figures.tracebacks and len(figures.samples) < 10:
            at = text.index("Traceback (most recent call last)")
            figures.samples.append(f"log: {text[at:at + 1500]}")

    def _check_store(self, honest: HonestAgent | None) -> None:
        figures = self.figures
        store = SqliteStore(self.store_path, readonly=True)
        try:
            honest_sequences: list[int] = []
            for mapping in store.events(EventFilter()):
                if INVALID in mapping:
                    figures.invalid_stored += 1
                    if len(figures.samples) < 10:
                        figures.samples.append(f"stored and unreadable: {mapping}")
                if honest is not None and mapping.get("agent.id") == honest.agent_id:
                    honest_sequences.append(int(mapping["event.sequence"]))
            for agent_id, acked in self._acked.items():
                if store.watermark(agent_id) < acked:
                    figures.acked_lost += 1
                    figures.samples.append(f"agent {agent_id!r}: acked {acked}, the store holds less")
        finally:
            store.close()
        if honest is not None:
            figures.honest_interrupted = len(honest.errors)
            figures.samples.extend(f"honest agent: {e}" for e in honest.errors[:3])
            figures.honest_events = len(honest_sequences)
            expected = set(range(1, honest.acked + 1))
            figures.honest_lost = len(expected - set(honest_sequences))
            figures.honest_duplicated = len(honest_sequences) - len(set(honest_sequences))


def run(seconds: float, directory: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The 'grpc' kind of bench.fuzz: fuzz for about `seconds`, then the end-of-run checks; the figures.

    Hypothesis draws the inputs, in rounds of ROUND_EXAMPLES (a round is one hypothesis run with a
    fresh seed), so the budget is kept without cutting a run short; nothing is shrunk: a bad
    answer is counted and the run goes on (a crash restarts the collector on a fresh store).
    """
    target = GrpcTarget(directory)
    target.start()
    for stream in seed_streams("fuzz-seed").values():  # the known defects first: all must be refused
        if target.send(stream).code != grpc.StatusCode.INVALID_ARGUMENT:
            target.figures.unexpected_status += 1
            target.figures.samples.append(f"seed {stream.messages!r} was not refused")
    deadline = time.monotonic() + seconds
    serial = 0

    @settings(
        max_examples=ROUND_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        nonlocal serial
        serial += 1
        # Ids come back, so later inputs meet stored watermarks; one length (see raw_streams).
        agent_id = f"fuzz-{serial % 4000:04d}"
        family = data.draw(st.sampled_from([structured_streams, structured_streams, raw_streams]))
        target.send(data.draw(family(agent_id)))
        if target.collector is not None and target.collector.process.poll() is not None:
            target.restart_after_crash()

    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            one()
        except Exception as exc:  # a fuzzer bug: counted and shown, the run goes on
            target.figures.fuzzer_errors += 1
            if len(target.figures.samples) < 10:
                target.figures.samples.append(f"fuzzer error: {type(exc).__name__}: {str(exc)[:500]}")
        rate = target.figures.inputs / max(1e-9, time.monotonic() - started)
        progress(
            f"grpc: {target.figures.inputs} inputs ({rate:.0f}/s), {target.figures.crashes} crashes, "
            f"{target.figures.hangs} hangs, collector RSS {target.rss_mib():.0f} MiB"
        )
    figures = target.finish()
    out = figures.to_dict()
    out["inputs_per_second"] = round(figures.inputs / max(1e-9, time.monotonic() - started), 1)
    return out
