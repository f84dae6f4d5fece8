"""An agent listing two real collectors on one PostgreSQL: collector 0 is killed (-9) mid-stream,
the agent streams to collector 1 from the watermark the shared store holds (nothing lost, nothing
twice), and goes back to collector 0 once it serves again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import iter_test_numbers, wait_for
from tests.fleet.harness import Fleet, exactly_once

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    two = Fleet(tmp_path, pg_url, 2)
    yield two
    two.close()


def test_killed_collector_agent_fails_over_then_back_exactly_once(fleet: Fleet) -> None:
    produced = 5_000
    first = fleet.start_collector(0)
    fleet.start_collector(1)
    agent = fleet.start_agent("ws-1", test_events=produced)
    agent_id = fleet.agent_id("ws-1")
    wait_for(lambda: 0 < fleet.stored_count() < produced // 2, 60, "the stream to be under way",
             fleet.diagnose)  # fmt: skip
    first.kill9()
    assert fleet.stored_count() < produced, "the kill must happen mid-stream"

    wait_for(lambda: fleet.stored_count() >= produced + 1, 60, f"all {produced} events through collector 1",
             fleet.diagnose)  # fmt: skip
    events = fleet.stored(agent_id)
    assert sorted(iter_test_numbers(events)) == list(range(1, produced + 1))
    assert exactly_once(events)
    assert f'"agent_id": "{agent_id}"' in fleet.collector(1).log_text()

    fleet.start_collector(0)  # back: the agent checks it every ~1 s (failback_seconds) and returns
    wait_for(lambda: "serves again: moving back" in agent.log_text(), 30, "failback", fleet.diagnose)
    assert agent.terminate() == 0
    wait_for(lambda: fleet.stored_count() >= produced + 2, 30, "agent.stop", fleet.diagnose)
    events = fleet.stored(agent_id)
    assert exactly_once(events)
    assert len(events) == produced + 2  # agent.start, the test events, agent.stop
    assert events[-1]["event.action"] == "agent.stop"
