"""The transport against a real grpc.aio server on loopback: ordered exactly-once delivery,
acks that delete from the spool, resend after a collector restart, size-bounded batches,
heartbeats, pushed config, and plaintext refused off loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.identity import Identity
from agent.spool import Spool
from agent.transport import Transport, TransportConfigError, backoff_delay, is_loopback, split_batches
from common.agentconfig import AgentConfig, AgentTls, BatchSettings
from protos import events
from protos import exfilguard_pb2 as pb
from tests.agent.fake_collector import FakeCollector, Received

IDENTITY = Identity(agent_id="0b6f1f52-2f43-4c57-9b0e-9f2f1c6f7a10", hostname="ws-test", machine_id="m")


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll `predicate` until true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _config(tmp_path: Path, address: str, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "collector": address,
        "state_dir": str(tmp_path),
        "heartbeat_seconds": 0.2,
        "reconnect_max_seconds": 0.5,
        "batch": BatchSettings(max_events=50, max_delay_ms=20),
    } | overrides
    return AgentConfig.model_validate(values)


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    server = FakeCollector().start()
    yield server
    server.stop()


def _agent(tmp_path: Path, config: AgentConfig, **kwargs: object) -> tuple[Spool, Transport]:
    spool = Spool(tmp_path, agent_id=IDENTITY.agent_id, version="1.2.3",
                  max_events=config.spool.max_events, max_bytes=config.spool.max_bytes)
    transport = Transport(config, spool, IDENTITY, version="1.2.3", capabilities=["test"], **kwargs)  # type: ignore[arg-type]
    return spool, transport


def _emit(spool: Spool, count: int, start: int = 0, path_bytes: int = 0) -> None:
    for n in range(start, start + count):
        spool.append(events.new_event("agent.test", exfilguard=pb.Extensions(count=n),
                                      file=pb.File(path="p" * path_bytes)))


def test_events_arrive_once_in_order_and_are_deleted_on_ack(tmp_path: Path, collector: FakeCollector) -> None:
    config = _config(tmp_path, collector.address)
    spool, transport = _agent(tmp_path, config)
    _emit(spool, 300)
    assert spool.flush(5)
    transport.start()
    received = collector.received
    wait_for(lambda: received.contiguous() == 300, what="300 events")
    wait_for(lambda: spool.backlog() == 0, what="spool drained by acks")
    assert received.deliveries == 300
    assert [received.events[s].exfilguard.count for s in range(1, 301)] == list(range(300))
    assert max(received.batch_sizes) <= 50
    hello = received.hellos[0]
    assert (hello.agent_id, hello.version, hello.hostname) == (IDENTITY.agent_id, "1.2.3", "ws-test")
    assert (hello.last_acked_sequence, hello.next_sequence, list(hello.capabilities)) == (0, 301, ["test"])
    wait_for(lambda: len(received.heartbeats) >= 1, what="a heartbeat")
    transport.stop(1)
    spool.close()


def test_collector_restart_resends_from_its_ack_without_loss(tmp_path: Path) -> None:
    first = FakeCollector().start()
    store = first.received
    config = _config(tmp_path, first.address)
    spool, transport = _agent(tmp_path, config)
    transport.start()
    _emit(spool, 200)
    wait_for(lambda: store.contiguous() >= 50, what="first events")
    first.stop()
    _emit(spool, 200, start=200)  # produced while the collector is down: spooled
    assert spool.flush(5)
    wait_for(lambda: not transport.connected, what="disconnect noticed")
    second = FakeCollector(port=first.port, received=store).start()
    try:
        wait_for(lambda: store.contiguous() == 400, what="all 400 events after restart")
        wait_for(lambda: spool.backlog() == 0, what="drained")
        assert sorted(e.exfilguard.count for e in store.events.values()) == list(range(400))
        assert len(store.hellos) >= 2
        assert store.hellos[-1].last_acked_sequence >= 50
        assert transport.stats.disconnects >= 1
    finally:
        transport.stop(1)
        spool.close()
        second.stop()


def test_a_deleted_spool_continues_after_what_the_collector_holds_instead_of_being_dropped(
    tmp_path: Path,
) -> None:
    # The collector holds 1..40 of this agent from before; the agent's spool was then deleted.
    store = Received()
    for seq in range(1, 41):
        old = events.new_event("agent.test", exfilguard=pb.Extensions(count=-seq))
        old.event.sequence = seq
        store.events[seq] = old
    server = FakeCollector(received=store).start()
    config = _config(tmp_path, server.address)
    spool, transport = _agent(tmp_path, config)
    _emit(spool, 5)
    assert spool.flush(5)
    transport.start()
    try:
        wait_for(lambda: store.contiguous() == 46, what="the gap and 5 events after sequence 40")
        gap = store.events[41]
        assert (gap.event.action, gap.exfilguard.gap.reason) == ("agent.gap", "sequence_reset")
        assert [store.events[s].exfilguard.count for s in range(42, 47)] == list(range(5))
        assert [store.events[s].exfilguard.count for s in range(1, 41)] == [-s for s in range(1, 41)]
        assert store.hellos[0].next_sequence == 6  # what it would have reused without the rebase
        wait_for(lambda: spool.backlog() == 0, what="spool drained by acks")
        _emit(spool, 2, start=5)  # later events follow on
        wait_for(lambda: store.contiguous() == 48, what="later events")
    finally:
        transport.stop(1)
        spool.close()
        server.stop()


def test_batches_stay_under_the_message_limit(tmp_path: Path) -> None:
    limit = 64 << 10
    server = FakeCollector(max_message_bytes=limit).start()
    config = _config(tmp_path, server.address, max_message_bytes=limit)
    spool, transport = _agent(tmp_path, config)
    _emit(spool, 40, path_bytes=10_000)  # 40 x 10 kB: one 50-event batch would be ~400 kB
    transport.start()
    try:
        wait_for(lambda: server.received.contiguous() == 40, what="large events")
        assert max(server.received.batch_sizes) <= 6
    finally:
        transport.stop(1)
        spool.close()
        server.stop()


def test_pushed_config_reaches_the_callback(tmp_path: Path, collector: FakeCollector) -> None:
    got: list[pb.AgentConfig] = []
    spool, transport = _agent(tmp_path, _config(tmp_path, collector.address), on_config=got.append)
    _emit(spool, 1)
    transport.start()
    wait_for(lambda: transport.connected, what="connection")
    collector.push_config(pb.AgentConfig(version="v7", yaml="tags: {}\n"))
    wait_for(lambda: bool(got), what="config callback")
    assert got[0].version == "v7"
    transport.stop(1)
    spool.close()


def test_stop_drains_the_spool_before_closing(tmp_path: Path, collector: FakeCollector) -> None:
    spool, transport = _agent(tmp_path, _config(tmp_path, collector.address,
                                                 batch=BatchSettings(max_events=500, max_delay_ms=60_000)))
    transport.start()
    wait_for(lambda: collector.received.hellos != [], what="hello")
    _emit(spool, 10)  # a 60 s linger would hold these back; stop must flush them
    spool.flush(5)
    transport.stop(5)
    assert collector.received.contiguous() == 10
    assert spool.backlog() == 0
    spool.close()


def test_plaintext_to_a_remote_collector_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, "10.1.2.3:50051", tls=AgentTls(insecure_loopback=True))
    spool = Spool(tmp_path, agent_id="a", version="1", max_events=100, max_bytes=1 << 20)
    with pytest.raises(TransportConfigError) as err:
        Transport(config, spool, IDENTITY, version="1")
    assert err.value.key == "tls.insecure_loopback"
    spool.close()


def test_helpers() -> None:
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("collector.example.com:1") and not is_loopback("192.168.1.1:1")
    delays = [backoff_delay(a, 30.0) for a in range(12)]
    assert all(0 < d <= 30.0 for d in delays)
    assert delays[-1] >= 15.0  # capped, and at least half the cap once it is reached
    rows = [(i, b"x" * 400) for i in range(1, 11)]
    parts = split_batches(rows, 2048)
    assert [r for part in parts for r in part] == rows
    assert all(sum(len(b) + 8 for _, b in part) <= 2048 - 1024 for part in parts)


def test_unsent_events_of_a_killed_agent_survive_in_the_spool(tmp_path: Path) -> None:
    # The in-process half of the kill -9 test: what was stored before the process died is
    # found by the next Spool on the same directory, with the same sequences.
    spool = Spool(tmp_path, agent_id="a", version="1", max_events=1000, max_bytes=1 << 20)
    _emit(spool, 25)
    spool.flush(5)
    again = Spool(tmp_path, agent_id="a", version="1", max_events=1000, max_bytes=1 << 20)
    assert [seq for seq, _ in again.unsent(0, 100)] == list(range(1, 26))
    again.close()
    spool.close()


_ = Received  # re-exported for other agent tests


def test_an_outage_is_logged_once_not_per_retry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(tmp_path, f"127.0.0.1:{port}", reconnect_max_seconds=0.05)
    spool, transport = _agent(tmp_path, config)
    caplog.set_level("DEBUG", logger="exfilguard.agent.transport")
    transport.start()
    wait_for(lambda: sum("reconnecting in" in r.message for r in caplog.records) >= 10, what="ten retries")
    transport.stop(0.1)
    spool.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "status=UNAVAILABLE" in warnings[0].message


def test_a_collector_with_a_smaller_message_limit_still_gets_everything(tmp_path: Path) -> None:
    server = FakeCollector(max_message_bytes=64 << 10).start()
    config = _config(tmp_path, server.address, max_message_bytes=1 << 20)  # agent thinks 1 MiB is fine
    spool, transport = _agent(tmp_path, config)
    _emit(spool, 40, path_bytes=10_000)
    spool.flush(5)
    transport.start()
    try:
        wait_for(lambda: server.received.contiguous() == 40, what="events after shrinking batches")
        assert transport.batch_bytes <= 64 << 10
    finally:
        transport.stop(1)
        spool.close()
        server.stop()


def test_a_flapping_collector_is_logged_once_not_per_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeCollector(reject_batches=True).start()  # answers the hello, then drops every stream
    config = _config(tmp_path, server.address, reconnect_max_seconds=0.05)
    spool, transport = _agent(tmp_path, config)
    _emit(spool, 5)
    spool.flush(5)
    caplog.set_level("INFO", logger="exfilguard.agent.transport")
    transport.start()
    try:
        wait_for(lambda: transport.stats.disconnects >= 5, what="five short-lived streams")
    finally:
        transport.stop(0.1)
        spool.close()
        server.stop()
    messages = [r.message for r in caplog.records if r.levelname in {"WARNING", "INFO"}]
    assert sum("lost connection" in m for m in messages) == 1
    assert sum(m.startswith("connected to collector") for m in messages) <= 2
