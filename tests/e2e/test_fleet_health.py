"""Fleet health end to end: an insider who kills the agent raises the silent-agent alert, and
`exfilguard agents` shows the agent as silent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import REPO, Pipeline, wait_for

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
