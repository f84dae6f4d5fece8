"""An agent listing two real collectors on one PostgreSQL: collector 0 is killed (-9) mid-stream,
the agent streams to collector 1 from the watermark the shared store holds (nothing lost, nothing
twice), and goes back to collector 0 once it serves again.

The agent is the real Spool and Transport in this process, so the kill can be placed while a
burst is being sent (a whole agent process sends 5,000 spooled events faster than a poll sees)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity import Identity
from agent.spool import Spool
from agent.transport import Transport
from common.agentconfig import AgentConfig
from protos import events
from protos import exfilguard_pb2 as pb
from tests.e2e.harness import wait_for
from tests.fleet.harness import Fleet, exactly_once

pytestmark = pytest.mark.slow

IDENTITY = Identity(agent_id="5e0c7f2e-95d4-4a8e-9d7a-failover0001", hostname="ws-failover", machine_id="m")


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    two = Fleet(tmp_path, pg_url, 2)
    yield two
    two.close()


def _emit(spool: Spool, first: int, count: int) -> None:
    for n in range(first, first + count):
        spool.append(events.new_event("agent.test", exfilguard=pb.Extensions(count=n)))


def test_killed_collector_agent_fails_over_then_back_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    first = fleet.start_collector(0)
    fleet.start_collector(1)
    config = AgentConfig.model_validate({
        "collector": [fleet.address(0), fleet.address(1)], "state_dir": str(tmp_path / "agent"),
        "heartbeat_seconds": 0.5, "reconnect_max_seconds": 1, "failback_seconds": 1,
        "batch": {"max_events": 200, "max_delay_ms": 20},
    })
    spool = Spool(config.state_dir, agent_id=IDENTITY.agent_id, version="1.0", max_events=100_000,
                  max_bytes=256 << 20)
    transport = Transport(config, spool, IDENTITY, version="1.0")
    transport.start()
    try:
        _emit(spool, 1, 1000)
        wait_for(lambda: spool.acked_sequence == 1000, 30, "the stream to collector 0", fleet.diagnose)
        assert transport.collector == fleet.address(0)
        _emit(spool, 1001, 2000)  # a burst on its way ...
        first.kill9()  # ... when collector 0 dies
        at_kill = fleet.stored_count()
        assert at_kill < 3_000, "the kill must happen mid-stream"
        wait_for(lambda: spool.acked_sequence == 3_000, 60, "everything through collector 1", fleet.diagnose)
        assert transport.collector == fleet.address(1) and transport.stats.failovers >= 1
        stored = fleet.stored(IDENTITY.agent_id)
        assert exactly_once(stored) and len(stored) == 3_000
        assert [int(e["exfilguard.count"]) for e in stored] == list(range(1, 3_001))

        fleet.start_collector(0)  # back: the agent asks its health every ~1 s and returns to it
        wait_for(lambda: transport.stats.failbacks == 1 and transport.connected, 30, "failback",
                 fleet.diagnose)  # fmt: skip
        assert transport.collector == fleet.address(0)
        _emit(spool, 3_001, 100)
        wait_for(lambda: spool.acked_sequence == 3_100, 30, "events after the failback", fleet.diagnose)
    finally:
        transport.stop(1)
        spool.close()
    stored = fleet.stored(IDENTITY.agent_id)
    assert exactly_once(stored) and len(stored) == 3_100
    assert f'"agent_id": "{IDENTITY.agent_id}"' in fleet.collector(1).log_text()
