"""Central config push end to end: a real collector process reads a fleet file and pushes it over
real gRPC to a real agent process, which applies it live (its sensors watch the new tag map)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import REPO, VENV_BIN, Pipeline, by_action, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path)
    yield pipe
    pipe.close()


def _use_fleet(pipe: Pipeline, fleet: Path, reload_seconds: float) -> None:
    with pipe.collector_config.open("a") as f:
        f.write(f"agent_config: {fleet}\nagent_config_reload_seconds: {reload_seconds}\n")


def _write(path: Path, text: str) -> None:
    """Replace the file at once (an editor's save), so a poll never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _only_agent(pipe: Pipeline) -> dict[str, Any] | None:
    agents = pipe.agents_json()
    return agents[0] if len(agents) == 1 else None


def _runs_expected(pipe: Pipeline, not_version: str = "") -> str | None:
    """The version the agent runs, once it is what the fleet file gives it (and not `not_version`)."""
    agent = _only_agent(pipe)
    if agent is None or not agent.get("config_expected"):
        return None
    running = str(agent["config_version"])
    return running if running == agent["config_expected"] and running != not_version else None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "exfilguard"), *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


def test_pushed_tag_map_changes_watched_paths_without_restart(pipeline: Pipeline, tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "tagged-old", tmp_path / "tagged-new"
    old_dir.mkdir()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"defaults:\n  tags:\n    {old_dir}: [alpha]\n")
    _use_fleet(pipeline, fleet, 0.2)
    pipeline.start_collector()
    agent = pipeline.start_agent(sensors=True)
    assert agent.proc is not None
    pid = agent.proc.pid
    wait_for(lambda: _runs_expected(pipeline) is not None, 30, "the agent to run its first central config",
             pipeline.diagnose)
    first = _runs_expected(pipeline)
    assert first

    new_dir.mkdir()  # a directory no config mentioned when the agent started
    _write(fleet, f"defaults:\n  tags:\n    {new_dir}: [beta]\n")
    wait_for(lambda: _runs_expected(pipeline, not_version=first) is not None, 30,
             "the agent to report the pushed config", pipeline.diagnose)
    second = _runs_expected(pipeline, not_version=first)

    (old_dir / "after.txt").write_text("no longer tagged\n")
    secret = new_dir / "report.txt"
    secret.write_text("quarterly numbers\n")
    assert secret.read_text() == "quarterly numbers\n"

    def tagged_event() -> list[dict[str, Any]]:
        return [e for e in pipeline.delivered()
                if e.get("file.path") == str(secret) and "beta" in e.get("tags", [])]

    wait_for(lambda: bool(tagged_event()), 30, "an event on the newly tagged file with tag beta",
             pipeline.diagnose)
    assert agent.alive and agent.proc.pid == pid, "the agent was not restarted"
    events = pipeline.delivered()
    assert len(by_action(events, "agent.start")) == 1
    stale = [e for e in events if e.get("file.path") == str(old_dir / "after.txt")]
    assert not stale, "the old tag map is still watched"
    applied = [e for e in by_action(events, "agent.config") if e.get("exfilguard.config_version") == second]
    assert applied and "applied" in applied[0]["event.reason"] and applied[0]["tags"] == ["beta"]

    state = json.loads((pipeline.agent_state / "central-config.json").read_text())
    assert state["version"] == second
    assert (pipeline.agent_state / "central-config.json").stat().st_mode & 0o777 == 0o600
    shown = _cli("config", "show", "--agent", pipeline.agent_id(), "--json",
                 "--config", str(pipeline.collector_config))
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["version"], doc["running"], doc["sources"]) == (second, second, ["defaults"])
    assert doc["settings"] == {"tags": {str(new_dir): ["beta"]}}
    table = _cli("agents", "--config", str(pipeline.collector_config))
    assert table.stdout.splitlines()[1].split()[-1] == second


def test_bad_fleet_file_is_refused_with_its_location_and_the_old_config_stays(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("defaults:\n  heartbeat_seconds: 0.5\n")
    _use_fleet(pipeline, fleet, 0)  # SIGHUP only
    collector = pipeline.start_collector()
    pipeline.start_agent()
    wait_for(lambda: _runs_expected(pipeline) is not None, 30, "the first central config", pipeline.diagnose)
    first = _runs_expected(pipeline)
    assert first

    _write(fleet, "defaults:\n  heartbeat_seconds: 0.5\n  spool:\n    max_events: 5\n")
    assert collector.proc is not None
    collector.proc.send_signal(signal.SIGHUP)
    where = f"{fleet}:3:3: defaults.spool: unknown key"
    wait_for(lambda: where in collector.log_text(), 30, "the refused reload in the collector log",
             pipeline.diagnose)
    # The fleet file's SIGHUP handler still reloads the policies as well.
    wait_for(lambda: "policy set reloaded" in collector.log_text(), 30, "the policy reload on SIGHUP",
             pipeline.diagnose)
    check = _cli("config", "check", "--config", str(pipeline.collector_config))
    assert check.returncode == 2 and where in check.stderr
    agent = _only_agent(pipeline)
    assert agent is not None and agent["config_version"] == first and "config_expected" not in agent

    _write(fleet, "defaults:\n  heartbeat_seconds: 0.4\n")
    collector.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _runs_expected(pipeline, not_version=first) is not None, 30,
             "the fixed fleet file pushed after SIGHUP", pipeline.diagnose)
    assert collector.alive


def test_collector_refuses_to_start_with_a_broken_fleet_file(tmp_path: Path) -> None:
    from tests.helpers import write_collector_config

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("hosts:\n  ws-1:\n    tags:\n      relative/dir: [x]\n")
    config = write_collector_config(tmp_path / "c", agent_config=str(fleet))
    done = subprocess.run([str(VENV_BIN / "exfilguard-collector"), "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=os.environ | {"PYTHONUNBUFFERED": "1"})
    assert done.returncode == 2
    assert f"{fleet}:3:5: hosts.ws-1.tags: " in done.stderr and "must be absolute" in done.stderr
