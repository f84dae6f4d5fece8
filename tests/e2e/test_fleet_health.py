"""Fleet health end to end: an insider who kills the agent raises the silent-agent alert, and
`exfilguard agents` shows the agent as silent; one who deletes its spool raises agent-spool-reset."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import REPO, VENV_BIN, Pipeline, Process, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path)
    # The shipped policy pack and a short silence threshold instead of the harness's empty set.
    text = pipe.collector_config.read_text()
    text = text.replace(f"policies: [{pipe.collector_dir / 'policies'}]", f"policies: [{REPO / 'policies'}]")
    pipe.collector_config.write_text(text + "silent_agent_seconds: 2\n")
    yield pipe
    pipe.close()


def _alerts(pipe: Pipeline) -> list[dict[str, Any]]:
    path = pipe.collector_dir / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_killing_the_agent_fires_the_silent_agent_alert(pipeline: Pipeline) -> None:
    pipeline.start_collector()
    agent = pipeline.start_agent()
    wait_for(lambda: [a["health"] for a in pipeline.agents_json()] == ["ok"], 30,
             "the agent healthy in the registry", pipeline.diagnose)
    assert not [a for a in _alerts(pipeline) if a["policy.id"] == "agent-silent"]

    agent.kill9()  # no agent.stop is sent: only the missing heartbeats tell

    def silent() -> list[dict[str, Any]]:
        return [a for a in _alerts(pipeline) if a["policy.id"] == "agent-silent"]

    wait_for(lambda: bool(silent()), 30, "the agent-silent alert in the JSONL sink", pipeline.diagnose)
    alert = silent()[0]
    assert alert["agent.id"] == pipeline.agent_id()
    assert alert["severity"] == "high"
    assert "no heartbeat" in alert["summary"]
    registry = pipeline.agents_json()
    assert [(a["connected"], a["health"]) for a in registry] == [(False, "silent")]
    stopped = [a for a in _alerts(pipeline) if a["policy.id"] == "agent-stopped"]
    assert not stopped, "a kill is not a clean stop"


def test_a_deleted_spool_is_alerted_and_its_new_events_are_not_dropped(pipeline: Pipeline) -> None:
    pipeline.start_collector()
    agent = pipeline.start_agent(test_events=300)
    wait_for(lambda: pipeline.delivered_count() >= 301, 60, "the first run's events", pipeline.diagnose)
    assert agent.terminate() == 0
    wait_for(lambda: pipeline.delivered_count() == 302, 30, "start, 300 tests and stop stored",
             pipeline.diagnose)
    held = pipeline.delivered_count()
    # The insider (root) wipes the spool but keeps the agent id, then the agent starts again.
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        (pipeline.agent_state / name).unlink(missing_ok=True)
    pipeline.start_agent(test_events=50)

    def reset_alerts() -> list[dict[str, Any]]:
        return [a for a in _alerts(pipeline) if a["policy.id"] == "agent-spool-reset"]

    wait_for(lambda: bool(reset_alerts()), 60, "the agent-spool-reset alert", pipeline.diagnose)
    alert = reset_alerts()[0]
    assert alert["severity"] == "high" and alert["agent.id"] == pipeline.agent_id()
    assert f"holds its events up to {held}" in alert["summary"]
    # Every event of the second run is stored after the gap, none taken for a resend.
    wait_for(lambda: pipeline.delivered_count() >= held + 1 + 1 + 50, 60, "the second run's events",
             pipeline.diagnose)
    events = pipeline.delivered()
    seqs = [int(e["event.sequence"]) for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    second = events[held:]
    assert second[0]["event.action"] == "agent.gap" and second[0]["exfilguard.gap.reason"] == "sequence_reset"
    assert [e["event.action"] for e in second[1:3]] == ["agent.start", "agent.test"]
    assert sum(1 for e in second if e["event.action"] == "agent.test") == 50
    assert not [a for a in _alerts(pipeline) if a["policy.id"] == "agent-events-lost"]


def test_a_clean_stop_is_stopped_not_silent_while_a_frozen_agent_still_alerts(pipeline: Pipeline) -> None:
    pipeline.start_collector()
    stopped = pipeline.start_agent()
    wait_for(lambda: list(_health(pipeline).values()) == ["ok"], 30, "the agent healthy in the registry",
             pipeline.diagnose)
    assert stopped.terminate() == 0  # a machine shut down for the night
    first = pipeline.agent_id()
    wait_for(lambda: list(_health(pipeline).values()) == ["stopped"], 30,
             "the registry to show the agent stopped", pipeline.diagnose)
    # A second agent, frozen with SIGSTOP after the clean stop (its stream stays open, it sends
    # no agent.stop: a kill -9 is test_killing_the_agent_...): its silence alert is the moment
    # by which the stopped agent's would have fired too (both use the same 2 s threshold).
    other = pipeline.agent_dir.parent / "agent-2"
    other.mkdir()
    (other / "agent.yaml").write_text(pipeline.agent_config.read_text())
    argv = [str(VENV_BIN / "exfilguard-agent"), "--config", str(other / "agent.yaml"), "--no-sensors"]
    killed = Process(argv, other / "agent.log").start()
    pipeline.processes.append(killed)
    wait_for(lambda: len(_health(pipeline)) == 2, 30, "the second agent", pipeline.diagnose)
    assert killed.proc is not None
    killed.proc.send_signal(signal.SIGSTOP)

    def silent() -> list[dict[str, Any]]:
        return [a for a in _alerts(pipeline) if a["policy.id"] == "agent-silent"]

    wait_for(lambda: bool(silent()), 30, "the frozen agent's agent-silent alert", pipeline.diagnose)
    frozen = (other / "state" / "agent-id").read_text().strip()
    assert [a["agent.id"] for a in silent()] == [frozen]
    health = {a["id"]: a["health"] for a in pipeline.agents_json()}
    assert (health[first], health[frozen]) == ("stopped", "silent")
    stops = [a for a in _alerts(pipeline) if a["policy.id"] == "agent-stopped"]
    assert [(a["agent.id"], a["severity"]) for a in stops] == [(first, "low")]


def _health(pipe: Pipeline) -> dict[str, str]:
    """Agent id -> health as `exfilguard agents` shows it, read from the store in this process
    (cheap enough to poll; the test reads the real command once at the end)."""
    from collector.fleet.health import health
    from collector.store import open_store

    store = open_store(pipe.store, readonly=True)
    try:
        return {r.id: health(r, 2.0) for r in store.agents()}
    finally:
        store.close()
