"""The pipeline end to end: a real agent process streams over real gRPC (loopback) to a real
collector process; every produced event is stored exactly once through crashes, outages and a
full spool, and losses are always reported by an agent.gap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Pipeline, by_action, iter_test_numbers, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    if not (Path(__file__).resolve().parents[2] / "collector" / "main.py").exists():
        pytest.fail("collector/main.py is missing: the pipeline tests need the real collector")
    pipe = Pipeline(tmp_path)
    yield pipe
    pipe.close()


def _assert_exactly_once(events: list[dict[str, Any]], agent_id: str) -> None:
    """Sequences 1..n with no hole and no repeat, one agent, unique event ids."""
    mine = [e for e in events if e.get("agent.id") == agent_id]
    seqs = [int(e["event.sequence"]) for e in mine]
    assert seqs == list(range(1, len(seqs) + 1)), "sequences must be contiguous and unique"
    ids = Counter(str(e["event.id"]) for e in mine)
    assert not [i for i, n in ids.items() if n > 1], "an event was stored twice"


def _delivered_tests(pipe: Pipeline, expected: int) -> bool:
    if pipe.delivered_count() < expected:  # not yet: skip decoding the whole store
        return False
    return sorted(iter_test_numbers(pipe.delivered())) == list(range(1, expected + 1))


def test_events_arrive_exactly_once_and_agent_stops_cleanly(pipeline: Pipeline) -> None:
    pipeline.start_collector()
    agent = pipeline.start_agent(test_events=2000, sensors=True)  # the real agent, sensors and all
    wait_for(lambda: _delivered_tests(pipeline, 2000), 60, "2000 test events", pipeline.diagnose)
    # Heartbeats (every 0.5 s here) keep the registry current: connected, nothing left to send.
    wait_for(lambda: [(a["connected"], a["backlog"]) for a in pipeline.agents_json()] == [(True, 0)], 30,
             "a connected agent with an empty backlog in the registry", pipeline.diagnose)
    assert agent.terminate() == 0
    wait_for(lambda: bool(by_action(pipeline.delivered(), "agent.stop")), 30, "agent.stop", pipeline.diagnose)
    events = pipeline.delivered()
    _assert_exactly_once(events, pipeline.agent_id())
    assert [e["event.action"] for e in events][:1] == ["agent.start"]
    assert [e["event.action"] for e in events][-1] == "agent.stop"
    assert len(by_action(events, "agent.test")) == 2000
    assert not by_action(events, "agent.gap")
    assert pipeline.spool_rows() == 0, "acknowledged events must leave the spool"
    # The collector writes its registry about once a second: poll `exfilguard agents --json`.
    wait_for(lambda: [a["id"] for a in pipeline.agents_json()] == [pipeline.agent_id()], 30,
             "the agent in `exfilguard agents --json`", pipeline.diagnose)
    record = pipeline.agents_json()[0]
    assert record["version"] and record["host"]
    wait_for(lambda: not pipeline.agents_json()[0]["connected"], 30, "the registry to see the agent go",
             pipeline.diagnose)


def test_collector_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(pipeline: Pipeline) -> None:
    produced = 30_000
    pipeline.start_collector()
    pipeline.start_agent(test_events=produced)
    wait_for(lambda: 0 < pipeline.delivered_count() < produced, 60, "the stream to be under way",
             pipeline.diagnose)
    assert pipeline.collector is not None
    pipeline.collector.kill9()
    stored_at_kill = pipeline.delivered_count()
    pipeline.start_collector()
    wait_for(lambda: _delivered_tests(pipeline, produced), 120, f"all {produced} events", pipeline.diagnose)
    assert stored_at_kill < produced + 1, "the kill must have happened mid-stream"
    assert pipeline.agent is not None
    assert "lost connection to collector" in pipeline.agent.log_text()
    _assert_exactly_once(pipeline.delivered(), pipeline.agent_id())


def test_agent_killed_with_unsent_events_delivers_them_after_restart(pipeline: Pipeline) -> None:
    produced = 500
    agent = pipeline.start_agent(test_events=produced)  # collector down: everything stays spooled
    wait_for(lambda: pipeline.spool_rows() == produced + 1, 30, "events durable in the spool",
             pipeline.diagnose)  # agent.start + the test events: nothing else without sensors
    agent.kill9()
    first_id = pipeline.agent_id()
    pipeline.start_collector()
    pipeline.start_agent()  # no new test events: only what the killed agent spooled
    wait_for(lambda: _delivered_tests(pipeline, produced), 60, "the killed agent's events", pipeline.diagnose)
    events = pipeline.delivered()
    _assert_exactly_once(events, first_id)
    assert pipeline.agent_id() == first_id, "the agent id must survive a restart"
    starts = by_action(events, "agent.start")
    assert len(starts) == 2 and {s["agent.id"] for s in starts} == {first_id}
    wait_for(lambda: pipeline.spool_rows() == 0, 30, "the spool to drain", pipeline.diagnose)


def test_agent_spools_while_collector_is_down_then_drains(pipeline: Pipeline) -> None:
    produced = 3000
    pipeline.start_agent(test_events=produced)
    wait_for(lambda: pipeline.spool_rows() == produced + 1, 30, "events spooled", pipeline.diagnose)
    assert pipeline.agent is not None and pipeline.agent.alive
    pipeline.start_collector()
    wait_for(lambda: _delivered_tests(pipeline, produced), 60, "the backlog to drain", pipeline.diagnose)
    wait_for(lambda: pipeline.spool_rows() == 0, 30, "the spool to empty", pipeline.diagnose)
    _assert_exactly_once(pipeline.delivered(), pipeline.agent_id())


def test_full_spool_reports_every_lost_event_in_an_agent_gap(pipeline: Pipeline) -> None:
    produced = 400
    pipeline.write_agent_config(max_events=100)
    pipeline.start_agent(test_events=produced)  # collector down: the spool fills at 100 events
    wait_for(lambda: '"spool_full"' in pipeline.spool_meta().get("losses", ""), 30, "losses to be counted",
             pipeline.diagnose)
    pipeline.start_collector()
    wait_for(lambda: bool(by_action(pipeline.delivered(), "agent.gap")), 60, "an agent.gap",
             pipeline.diagnose)
    events = pipeline.delivered()
    gaps = by_action(events, "agent.gap")
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap["exfilguard.gap.reason"] == "spool_full"
    assert "exfilguard.gap.first" in gap and "exfilguard.gap.last" in gap
    delivered = sorted(iter_test_numbers(events))
    assert len(set(delivered)) == len(delivered)
    assert len(delivered) + int(gap["exfilguard.gap.lost"]) == produced, "nothing may be lost silently"
    # What was stored is the first events; the lost ones are exactly the rest.
    assert delivered == list(range(1, len(delivered) + 1))
    _assert_exactly_once(events, pipeline.agent_id())
    # The fleet registry tells the admin too.
    expected = [(1, int(gap["exfilguard.gap.lost"]))]
    wait_for(lambda: [(a["gaps"], a["lost"]) for a in pipeline.agents_json()] == expected, 30,
             "the gap in `exfilguard agents --json`", pipeline.diagnose)


def test_agent_id_persists_across_restarts(pipeline: Pipeline) -> None:
    pipeline.start_collector()
    first = pipeline.start_agent(test_events=3)
    wait_for(lambda: _delivered_tests(pipeline, 3), 30, "first run's events", pipeline.diagnose)
    agent_id = pipeline.agent_id()
    assert first.terminate() == 0
    second = pipeline.start_agent(test_events=3)
    wait_for(lambda: len(by_action(pipeline.delivered(), "agent.start")) == 2, 30, "second start",
             pipeline.diagnose)
    assert second.terminate() == 0
    assert pipeline.agent_id() == agent_id
    events = pipeline.delivered()
    assert {e["agent.id"] for e in events} == {agent_id}
    _assert_exactly_once(events, agent_id)
    wait_for(lambda: [a["id"] for a in pipeline.agents_json()] == [agent_id], 30,
             "one agent in the registry", pipeline.diagnose)
