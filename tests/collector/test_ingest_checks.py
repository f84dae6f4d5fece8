"""The ingest boundary over real gRPC: bad events refused by name, malformed bytes, old bad rows, limits."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from collector.store.sqlite import SqliteStore
from protos import exfilguard_pb2 as pb
from tests.helpers import (
    AgentStream,
    CollectorProcess,
    make_events,
    run_cli,
    start_collector,
    stored_sequences,
    wait_for,
    write_collector_config,
)

Mutation = Callable[[pb.Event], None]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    config = write_collector_config(tmp_path_factory.mktemp("checks"))
    with start_collector(config) as running:
        yield running
        assert running.stop() == 0, running.log()


def _store(collector: CollectorProcess) -> Path:
    return collector.config.parent / "collector.db"


def _log_records(collector: CollectorProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in collector.log().splitlines() if line.startswith("{")]


def _set(path: str, value: int) -> Mutation:
    def mutate(event: pb.Event) -> None:
        *parents, last = path.split(".")
        holder: object = event
        for name in parents:
            holder = getattr(holder, name)
        setattr(holder, last, value)

    return mutate


def _clear_timestamp(event: pb.Event) -> None:
    event.ClearField("timestamp")


def _nul_path(event: pb.Event) -> None:
    event.file.path = "/srv/db/a\x00b"


def _no_id(event: pb.Event) -> None:
    event.event.id = ""


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (_set("timestamp.nanos", -1), "@timestamp", "nanos -1 outside"),
        (_set("timestamp.nanos", 1_000_000_000), "@timestamp", "nanos 1000000000 outside"),
        (_set("timestamp.seconds", -62_135_596_801), "@timestamp", "seconds -62135596801 outside"),  # year 0
        (_set("timestamp.seconds", 253_402_300_800), "@timestamp", "seconds 253402300800 outside"),  # 10000
        (_set("timestamp.seconds", -1), "@timestamp", "outside 1970-01-01"),
        (_set("exfilguard.gap.first.nanos", -5), "exfilguard.gap.first", "nanos -5"),
        (_set("exfilguard.late_window.end.nanos", -1), "exfilguard.late_window.end", "nanos -1"),
        (_clear_timestamp, "@timestamp", "missing"),
        (_no_id, "event.id", "empty"),
        (_nul_path, "file.path", "NUL"),
        (_set("event.sequence", (1 << 63) - 1), "event.sequence", "larger than"),
        (_set("event.sequence", 3 + (1 << 32) + 1), "event.sequence", "above the acknowledged sequence 0"),
    ],
    ids=["nanos-negative", "nanos-1e9", "year-0", "year-10000", "before-1970", "gap-first", "late-window",
         "no-timestamp",
         "no-id", "nul", "sequence-2^63-1", "sequence-jump"],
)
def test_a_bad_event_refuses_its_batch_by_name_and_another_agent_goes_on(
    collector: CollectorProcess, mutate: Mutation, field: str, words: str, request: pytest.FixtureRequest
) -> None:
    bad_agent, honest_agent = f"bad-{request.node.callspec.id}", f"honest-{request.node.callspec.id}"
    batch = make_events(bad_agent, 1, 5)
    mutate(batch[2])
    address = collector.address
    with AgentStream(address, honest_agent) as honest, AgentStream(address, bad_agent) as bad:
        assert honest.ack() == 0
        assert bad.ack() == 0
        honest.send_events(make_events(honest_agent, 1, 50))
        bad.send_events(batch)
        code, details = bad.status()
        honest.send_events(make_events(honest_agent, 51, 100))
        acks = [honest.ack(), honest.ack()]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"event sequence {batch[2].event.sequence} (#2 in batch" in details
    assert field in details
    assert words in details
    assert stored_sequences(_store(collector), bad_agent) == []  # nothing of the batch
    assert acks == [50, 100]
    assert stored_sequences(_store(collector), honest_agent) == list(range(1, 101))


def test_malformed_bytes_are_invalid_argument_with_one_warning_and_no_traceback(tmp_path: Path) -> None:
    # A collector of its own: refusal warnings are rate-limited per second, shared by all streams.
    with start_collector(write_collector_config(tmp_path)) as collector:
        _send_garbage(collector)
        assert collector.stop() == 0


def _send_garbage(collector: CollectorProcess) -> None:
    hello = pb.AgentMessage(hello=pb.Hello(agent_id="raw-bytes")).SerializeToString()
    garbage = [b"\x12\x05\xff\xff\xff", b"\xff" * 40, b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]
    with grpc.insecure_channel(collector.address) as channel:
        method = "/exfilguard.v1.Ingest/Stream"  # no (de)serializers: bytes in, bytes out
        raw: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        for blob in garbage:
            call = raw(iter([hello, blob]))
            with pytest.raises(grpc.RpcError) as ended:
                list(call)
            assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed AgentMessage" in (ended.value.details() or "")
    wait_for(lambda: sum("malformed AgentMessage" in str(r.get("msg")) for r in _log_records(collector)) >= 3,
             what="one warning per malformed stream")
    records = _log_records(collector)
    malformed = [r for r in records if "malformed AgentMessage" in str(r.get("msg"))]
    assert {r["level"] for r in malformed} == {"warning"}
    assert len(malformed) == 3
    assert "Traceback" not in collector.log()


def test_old_store_with_bad_rows_is_sealed_and_exported_with_them_described(tmp_path: Path) -> None:
    """A store written before ingest checked timestamps: nothing crash-loops, every row is accounted for."""
    store = SqliteStore(tmp_path / "collector.db")
    old = make_events("old-agent", 1, 6)
    old[2].timestamp.nanos = -1  # what versions before this check stored and acked
    store.ingest_batches([("old-agent", old)], seal=False)
    store.close()
    # And bytes that are not an event at all (a flipped byte in the data column).
    with contextlib.closing(sqlite3.connect(tmp_path / "collector.db", isolation_level=None)) as db:
        db.execute("UPDATE events SET data = ? WHERE agent_id = 'old-agent' AND sequence = 5", (b"\xff\xff",))
    config = write_collector_config(tmp_path)
    with start_collector(config) as collector:
        with AgentStream(collector.address, "new-agent") as agent:
            assert agent.ack() == 0
            agent.send_events(make_events("new-agent", 1, 10))
            assert agent.ack() == 10
        reader = SqliteStore(tmp_path / "collector.db", readonly=True)
        try:

            def heads() -> tuple[int, int]:
                return reader.chain_head("old-agent")[0], reader.chain_head("new-agent")[0]

            wait_for(lambda: heads() == (6, 10), what="both agents chained")
        finally:
            reader.close()
        assert collector.stop() == 0
    log = collector.log()
    assert "Traceback" not in log
    warnings = [r for r in map(json.loads, filter(None, log.splitlines())) if r.get("sequence") in (3, 5)]
    assert {(r["level"], r["agent_id"], r["sequence"]) for r in warnings} >= {
        ("warning", "old-agent", 3),
        ("warning", "old-agent", 5),
    }

    pub, out = tmp_path / "collector.pub", tmp_path / "all.jsonl"
    assert run_cli("key", "export", "--config", str(config), "--out", str(pub)).returncode == 0
    done = run_cli("export", "--config", str(config), "--format", "jsonl", "--out", str(out))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["agent.id"], r["event.sequence"]) for r in records] == [
        *(("new-agent", s) for s in range(1, 11)),
        *(("old-agent", s) for s in range(1, 7)),
    ]
    third, fifth = records[12], records[14]
    assert "@timestamp" not in third
    assert third["exfilguard.invalid"] == ["@timestamp: seconds=" + str(old[2].timestamp.seconds)
                                           + " nanos=-1: nanos outside 0..999999999"]
    assert "does not parse" in fifth["exfilguard.invalid"][0]
    done = run_cli("verify", str(out), "--public-key", str(pub))
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ stream limits


def test_connections_that_never_say_hello_cannot_lock_an_agent_out(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path, max_streams=2, hello_timeout_seconds=1.0)
    with start_collector(config) as collector:
        idle = [AgentStream(collector.address, None) for _ in range(20)]  # connect, then nothing
        try:
            with AgentStream(collector.address, "real-1") as one, AgentStream(
                collector.address, "real-2"
            ) as two:
                assert one.ack() == 0
                assert two.ack() == 0
                one.send_events(make_events("real-1", 1, 10))
                assert one.ack() == 10
            started = time.monotonic()
            code, details = idle[0].status(timeout=10)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no hello within 1 s" in details
            assert time.monotonic() - started < 5
        finally:
            for stream in idle:
                stream.close()
        assert collector.stop() == 0


def test_pending_hellos_per_address_and_streams_per_address_are_capped(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path, max_pending_hellos_per_peer=3, max_streams_per_peer=1)
    with start_collector(config) as collector:
        idle = [AgentStream(collector.address, None) for _ in range(3)]
        try:
            # Bounded poll: the idle streams reach the collector in their own time.
            details = wait_for(lambda: _refusal(collector.address, "fourth"), what="a refused fourth stream")
            assert "waiting for their hello" in details and "per address" in details
        finally:
            for stream in idle:
                stream.close()
        # Once the idle streams are gone (the collector sees their ends in its own time):
        first = wait_for(lambda: _acked_stream(collector.address, "first"), what="idle streams gone")
        assert first is not None
        with first:
            with AgentStream(collector.address, "second") as second:
                code, details = second.status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 per address" in details
        assert collector.stop() == 0


def _refusal(address: str, agent_id: str) -> str:
    """The details of a refusal for waiting hellos, or "" (acknowledged, or refused for a slot
    an earlier poll still held: the collector sees streams close in its own time)."""
    with AgentStream(address, agent_id) as stream:
        try:
            stream.ack()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            details = exc.details() or ""
            return details if "waiting for their hello" in details else ""
        return ""


def _acked_stream(address: str, agent_id: str) -> AgentStream | None:
    """A stream whose hello was acknowledged, still open; None (closed) if it was refused."""
    stream = AgentStream(address, agent_id)
    try:
        stream.ack()
    except grpc.RpcError:
        stream.close()
        return None
    return stream


def test_a_silent_stream_is_closed_and_a_heartbeating_one_is_not(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path, idle_stream_seconds=1.0)
    with start_collector(config) as collector:
        address = collector.address
        with AgentStream(address, "quiet") as quiet, AgentStream(address, "beating") as beating:
            assert quiet.ack() == 0
            assert beating.ack() == 0
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                beating.heartbeat()
                time.sleep(0.3)
            code, details = quiet.status(timeout=1)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "idle_stream_seconds" in details
            beating.send_events(make_events("beating", 1, 3))
            assert beating.ack() == 3
        assert collector.stop() == 0


def test_a_batch_the_store_cannot_take_ends_its_stream_unacknowledged(tmp_path: Path) -> None:
    # The idle sweep is off: only the failed commit may end the stream.
    config = write_collector_config(tmp_path, idle_stream_seconds=0)
    with start_collector(config) as collector:
        db = sqlite3.connect(tmp_path / "collector.db")
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.agent_id = 'doomed'"
            " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
        db.commit()
        db.close()
        with (
            AgentStream(collector.address, "doomed") as doomed,
            AgentStream(collector.address, "fine") as fine,
        ):
            assert doomed.ack() == 0
            assert fine.ack() == 0
            doomed.send_events(make_events("doomed", 1, 3))
            code, details = doomed.status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "could not store" in details
            fine.send_events(make_events("fine", 1, 3))
            assert fine.ack() == 3
        assert collector.stop() == 0
