"""The pipeline on a PostgreSQL store: a real collector process with `store: postgresql://…` and a
real agent process; exactly once through a kill -9 of the collector, then the admin commands
(export, verify, prune, agents, alerts) on that store. A store the collector cannot reach stops
it with an error naming host and database, never the password."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import REPO, VENV_BIN, Pipeline, free_port, iter_test_numbers, wait_for
from tests.pg import ROLE, PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path: Path, pg_url: str) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path)
    pipe.store = pg_url
    pipe.write_collector_config()
    yield pipe
    pipe.close()


def _admin(pipe: Pipeline, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `exfilguard ARGV --config collector.yaml` as an admin would."""
    command = [str(VENV_BIN / "exfilguard"), *argv, "--config", str(pipe.collector_config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


def _all_tests_stored(pipe: Pipeline, expected: int) -> bool:
    if pipe.delivered_count() < expected:
        return False
    return sorted(iter_test_numbers(pipe.delivered())) == list(range(1, expected + 1))


def test_postgresql_store_exactly_once_through_kill9_then_export_and_verify(
    pipeline: Pipeline, pg_cluster: PgCluster
) -> None:
    produced = 20_000
    collector = pipeline.start_collector()
    assert collector.proc is not None
    # The sealer gets the URL in its environment: no password on any command line (ps).
    parent = psutil.Process(collector.proc.pid)

    def sealers() -> list[str]:
        lines = [" ".join(p.cmdline()) for p in parent.children()]
        return [line for line in lines if "collector.sealer" in line]

    wait_for(lambda: bool(sealers()), 30, "the sealer process", pipeline.diagnose)
    assert all(pg_cluster.password not in line for line in sealers())
    pipeline.start_agent(test_events=produced)
    wait_for(lambda: 0 < pipeline.delivered_count() < produced, 60, "the stream to be under way",
             pipeline.diagnose)  # fmt: skip
    collector.kill9()
    stored_at_kill = pipeline.delivered_count()
    pipeline.start_collector()
    wait_for(lambda: _all_tests_stored(pipeline, produced), 120, f"all {produced} events", pipeline.diagnose)
    assert stored_at_kill < produced + 1, "the kill must have happened mid-stream"
    agent_id = pipeline.agent_id()
    events = pipeline.delivered()
    seqs = [int(e["event.sequence"]) for e in events if e["agent.id"] == agent_id]
    assert seqs == list(range(1, len(seqs) + 1)), "sequences must be contiguous and unique"
    assert not [i for i, n in Counter(str(e["event.id"]) for e in events).items() if n > 1]
    assert pipeline.agent is not None and pipeline.agent.terminate() == 0
    wait_for(lambda: pipeline.delivered()[-1]["event.action"] == "agent.stop", 30, "agent.stop",
             pipeline.diagnose)  # fmt: skip
    assert pipeline.collector is not None and pipeline.collector.terminate() == 0  # seals what is left

    out = pipeline.base / "all.jsonl"
    export = _admin(pipeline, "export", "--format", "jsonl", "--out", str(out))
    assert export.returncode == 0, export.stderr
    stored = pipeline.delivered_count()
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["rows"] == stored == produced + 2  # agent.start, the test events, agent.stop
    public = pipeline.base / "collector.pub"
    assert _admin(pipeline, "key", "export", "--out", str(public)).returncode == 0
    verify = subprocess.run(
        [str(VENV_BIN / "exfilguard"), "verify", str(out), "--public-key", str(public)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    agents = json.loads(_admin(pipeline, "agents", "--json").stdout)
    records = agents["agents"] if isinstance(agents, dict) else agents
    assert [(a["id"], a["watermark"]) for a in records] == [(agent_id, stored)]
    assert _admin(pipeline, "alerts", "--json").returncode == 0
    prune = _admin(pipeline, "prune", "--older-than", "1d", "--json")
    assert prune.returncode == 0, prune.stderr
    assert json.loads(prune.stdout)["deleted"] == 0  # nothing is a day old
    for process in pipeline.processes:
        assert pg_cluster.password not in process.log_text()


def _start_and_fail(pipe: Pipeline) -> subprocess.CompletedProcess[str]:
    argv = [str(VENV_BIN / "exfilguard-collector"), "--config", str(pipe.collector_config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)


def test_collector_with_wrong_password_or_server_down_stops_naming_host_and_database(
    pipeline: Pipeline, pg_cluster: PgCluster
) -> None:
    database = pg_cluster.create_database()
    pipeline.store = pg_cluster.url(database, password="Wr0ng-Passw0rd")  # noqa: S106 (the wrong one)
    pipeline.write_collector_config()
    wrong = _start_and_fail(pipeline)
    assert wrong.returncode == 1  # as for any store the collector cannot open
    assert f"postgresql://127.0.0.1:{pg_cluster.port}/{database}" in wrong.stderr
    assert f"authentication failed for user {ROLE}" in wrong.stderr
    assert "Wr0ng-Passw0rd" not in wrong.stdout + wrong.stderr

    port = free_port()
    pipeline.store = f"postgresql://{ROLE}:{pg_cluster.password}@127.0.0.1:{port}/{database}"
    pipeline.write_collector_config()
    down = _start_and_fail(pipeline)
    assert down.returncode == 1
    assert f"postgresql://127.0.0.1:{port}/{database}" in down.stderr
    assert "server not reachable" in down.stderr
    assert pg_cluster.password not in down.stdout + down.stderr
