"""The collector process over real gRPC: exactly-once storage, acks, bad input, other agents unharmed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from protos import chain
from protos import exfilguard_pb2 as pb
from tests.helpers import (
    INGEST_SERVICE,
    AgentStream,
    CollectorProcess,
    health_status,
    iter_stored,
    make_event,
    make_events,
    start_collector,
    stored_sequences,
    wait_for,
    write_collector_config,
)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    directory = tmp_path_factory.mktemp("collector")
    config = write_collector_config(directory, max_message_bytes=256 << 10, max_streams=50)
    with start_collector(config) as running:
        yield running
        assert running.stop() == 0, running.log()


def _bare(agent_id: str, sequence: int) -> pb.Event:
    return pb.Event(agent=pb.AgentInfo(id=agent_id), event=pb.EventInfo(sequence=sequence))


def _store(collector: CollectorProcess) -> Path:
    return collector.config.parent / "collector.db"


def test_health_is_serving(collector: CollectorProcess) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(collector.address) == serving
    assert health_status(collector.address, INGEST_SERVICE) == serving


def test_batches_are_stored_once_and_acknowledged(collector: CollectorProcess) -> None:
    with AgentStream(collector.address, "exact-once") as stream:
        assert stream.ack() == 0
        stream.send_events(make_events("exact-once", 1, 500))
        assert stream.ack() == 500
        stream.send_events(make_events("exact-once", 501, 700))
        assert stream.ack() == 700
        # The same batch again (the agent did not see the ack): acked, not stored twice.
        stream.send_events(make_events("exact-once", 501, 700))
        assert stream.ack() == 700
    assert stored_sequences(_store(collector), "exact-once") == list(range(1, 701))


def test_hello_is_answered_with_the_stored_watermark(collector: CollectorProcess) -> None:
    with AgentStream(collector.address, "rejoin") as stream:
        assert stream.ack() == 0
        stream.send_events(make_events("rejoin", 1, 40))
        assert stream.ack() == 40
    with AgentStream(collector.address, "rejoin") as again:
        assert again.ack() == 40
        again.send_events(make_events("rejoin", 30, 45))  # overlaps what is stored
        assert again.ack() == 45
    assert stored_sequences(_store(collector), "rejoin") == list(range(1, 46))


def _chained(store: Path, agent_id: str, last: int) -> list[dict[str, Any]]:
    """The agent's events once the sealer has chained all of 1..last, else [] (for wait_for)."""
    stored = list(iter_stored(store, agent_id))
    done = len(stored) >= last and all("exfilguard.chain.hash" in m for m in stored[:last])
    return stored if done else []


def test_ack_stops_at_a_hole_and_the_chain_covers_only_contiguous_events(collector: CollectorProcess) -> None:
    with AgentStream(collector.address, "holes") as stream:
        assert stream.ack() == 0
        stream.send_events(make_events("holes", 1, 3))
        assert stream.ack() == 3
        stream.send_events(make_events("holes", 6, 8))
        assert stream.ack() == 3  # 4 and 5 missing
        wait_for(lambda: _chained(_store(collector), "holes", 3), what="1..3 chained")
        unchained = {m["event.sequence"]: m for m in iter_stored(_store(collector), "holes")}
        assert "exfilguard.chain.hash" not in unchained[6]  # above the hole: never chained early
        stream.send_events(make_events("holes", 4, 5))
        assert stream.ack() == 8
    stored = wait_for(lambda: _chained(_store(collector), "holes", 8), what="1..8 chained")
    assert [m["event.sequence"] for m in stored] == list(range(1, 9))
    prev = chain.GENESIS
    for mapping in stored:
        prev = chain.link(prev, mapping)
        assert mapping["exfilguard.chain.hash"] == prev.hex(), mapping["event.sequence"]


def test_first_message_must_be_hello(collector: CollectorProcess) -> None:
    first = pb.AgentMessage(batch=pb.EventBatch(events=[make_event("nohello", 1)]))
    with AgentStream(collector.address, None, first=first) as stream:
        code, details = stream.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must be a hello" in details
    assert stored_sequences(_store(collector), "nohello") == []


def test_wrong_agent_id_is_rejected_while_another_agent_keeps_streaming(collector: CollectorProcess) -> None:
    with AgentStream(collector.address, "honest") as honest, AgentStream(collector.address, "liar") as liar:
        assert honest.ack() == 0
        assert liar.ack() == 0
        honest.send_events(make_events("honest", 1, 100))
        batch = make_events("liar", 1, 10)
        batch[6].agent.id = "honest"  # event sequence 7 claims to be another agent's
        liar.send_events(batch)
        code, details = liar.status()
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "event sequence 7" in details
        assert "'honest'" in details
        assert honest.ack() == 100
        honest.send_events(make_events("honest", 101, 200))
        assert honest.ack() == 200
    assert stored_sequences(_store(collector), "liar") == []
    assert stored_sequences(_store(collector), "honest") == list(range(1, 201))


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda batch: batch[2].event.ClearField("sequence"), "event.sequence must be > 0"),
        (lambda batch: setattr(batch[1].event, "sequence", 1 << 63), "larger than"),
        # Bare events, so the batch stays under the message size limit and only the count is wrong.
        (lambda batch: batch.extend(_bare("big", s) for s in range(6, 10_007)), "exceeds the limit of 10000"),
    ],
    ids=["zero-sequence", "sequence-beyond-int64", "too-many-events"],
)
def test_malformed_batches_are_invalid_argument(
    collector: CollectorProcess, mutate: object, words: str
) -> None:
    batch = make_events("big", 1, 5)
    assert callable(mutate)
    mutate(batch)
    with AgentStream(collector.address, "big") as stream:
        assert stream.ack() == 0
        stream.send_events(batch)
        code, details = stream.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details


def test_second_hello_and_empty_message_are_invalid_argument(collector: CollectorProcess) -> None:
    for message, words in (
        (pb.AgentMessage(hello=pb.Hello(agent_id="twice")), "hello may only be the first"),
        (pb.AgentMessage(), "empty AgentMessage"),
    ):
        with AgentStream(collector.address, "twice") as stream:
            assert stream.ack() == 0
            stream.send(message)
            code, details = stream.status()
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert words in details


def test_oversized_message_is_resource_exhausted_and_the_collector_keeps_serving(
    collector: CollectorProcess,
) -> None:
    huge = make_event("oversize", 1, file=pb.File(path="/srv/db/" + "x" * (300 << 10)))
    with AgentStream(collector.address, "oversize") as stream:
        assert stream.ack() == 0
        stream.send_events([huge])
        code, _ = stream.status()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with AgentStream(collector.address, "oversize") as stream:
        assert stream.ack() == 0
        stream.send_events(make_events("oversize", 1, 3))
        assert stream.ack() == 3


def test_bad_agent_id_in_hello(collector: CollectorProcess) -> None:
    with AgentStream(collector.address, "") as stream:
        code, details = stream.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent_id is empty" in details


def test_streams_beyond_max_streams_are_resource_exhausted(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path, max_streams=2)
    with start_collector(config) as collector:
        first, second = AgentStream(collector.address, "s1"), AgentStream(collector.address, "s2")
        with first, second:
            assert first.ack() == 0
            assert second.ack() == 0
            with AgentStream(collector.address, "s3") as third:
                code, details = third.status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams" in details
        # Closed streams free their slots.
        with AgentStream(collector.address, "s3") as third:
            assert third.ack() == 0
        assert collector.stop() == 0


def test_pipelined_batches_are_acked_in_order(collector: CollectorProcess) -> None:
    with AgentStream(collector.address, "pipelined") as stream:
        assert stream.ack() == 0
        for first in range(1, 2_001, 100):  # 20 batches without waiting for any ack
            stream.send_events(make_events("pipelined", first, first + 99))
        acks = [stream.ack() for _ in range(20)]
    assert acks == sorted(acks)
    assert acks[-1] == 2_000
    assert stored_sequences(_store(collector), "pipelined") == list(range(1, 2_001))
