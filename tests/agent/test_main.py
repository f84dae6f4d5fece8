"""`exfilguard-agent` as a process: config errors, the test-event option, clean stop; and identity."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import identity

AGENT = str(Path(sys.executable).parent / "exfilguard-agent")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=60, check=False)


def test_bad_config_is_one_stderr_line_with_file_line_key_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("collector: 127.0.0.1:50051\nspool:\n  max_events: 5\n")
    result = _run("--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"exfilguard-agent: {config}:3:")
    assert "spool.max_events" in lines[0]
    assert not (tmp_path / "state").exists(), "nothing may be created for a bad config"


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = _run("--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr


def test_plaintext_to_a_remote_collector_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("collector: 192.0.2.10:50051\ntls:\n  insecure_loopback: true\nstate_dir: state\n")
    result = _run("--config", str(config))
    assert result.returncode == 2
    assert "tls.insecure_loopback" in result.stderr and "loopback" in result.stderr


def test_negative_test_event_count_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("state_dir: state\n")
    assert _run("--config", str(config), "--emit-test-events", "-1").returncode == 2


def test_sigterm_spools_agent_stop_and_exits_0_while_collector_is_down(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    # A port nothing listens on: the events must stay spooled, in order.
    config.write_text("collector: 127.0.0.1:9\nstate_dir: state\nreconnect_max_seconds: 1\n")
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([AGENT, "--config", str(config), "--emit-test-events", "3"],
                                stdout=log_file, stderr=subprocess.PIPE)
        spool = tmp_path / "state" / "spool.db"
        # Sensors start before the transport; wait for its first (and only) outage line.
        _wait(lambda: _rows(spool) >= 4 and "cannot reach collector" in log_path.read_text(),
              "the events spooled and the outage logged",
              diagnose=lambda: f"{_rows(spool)} rows spooled; its log: {log_path.read_text()[-3000:]}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    logs = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in logs)
    assert sum("cannot reach collector" in entry["msg"] for entry in logs) == 1
    with contextlib.closing(sqlite3.connect(spool)) as conn:
        blobs = [row[0] for row in conn.execute("SELECT data FROM events ORDER BY seq")]
    from protos import exfilguard_pb2 as pb

    decoded = [pb.Event.FromString(b) for b in blobs]
    mine = [e.event.action for e in decoded if e.event.action in {"agent.start", "agent.test", "agent.stop"}]
    assert mine == ["agent.start", *["agent.test"] * 3, "agent.stop"]  # sensors may add their own
    assert decoded[-1].event.action == "agent.stop"
    assert [e.event.sequence for e in decoded] == list(range(1, len(decoded) + 1))
    assert "SIGTERM" in decoded[-1].event.reason
    assert all(e.host.name and e.agent.id == decoded[0].agent.id for e in decoded)


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_identity_is_created_once_private_and_stable(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path / "state")
    again = identity.load_or_create(tmp_path / "state")
    assert first.agent_id == again.agent_id
    uuid.UUID(first.agent_id)
    path = tmp_path / "state" / identity.ID_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.hostname
    assert not list((tmp_path / "state").glob(".*.tmp")), "no temp file left behind"


def test_corrupt_identity_is_an_error_not_a_new_id(tmp_path: Path) -> None:
    (tmp_path / identity.ID_FILE).write_text("not-a-uuid\n")
    with pytest.raises(identity.IdentityError) as err:
        identity.load_or_create(tmp_path)
    assert err.value.path == str(tmp_path / identity.ID_FILE)


def test_pushed_config_is_stored_privately_and_reported_in_the_next_hello(tmp_path: Path) -> None:
    from protos import exfilguard_pb2 as pb
    from tests.agent.fake_collector import FakeCollector

    server = FakeCollector().start()
    config = tmp_path / "agent.yaml"
    config.write_text(f"collector: {server.address}\nstate_dir: state\nreconnect_max_seconds: 0.5\n")
    stored = tmp_path / "state" / "central-config.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = subprocess.Popen([AGENT, "--config", str(config), "--no-sensors"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(first)
        _wait(lambda: server.received.contiguous() >= 1, "agent.start at the collector")
        server.push_config(pb.AgentConfig(version="cfg-42", yaml="tags: {}\n"))
        _wait(stored.exists, "the pushed config on disk")
        assert json.loads(stored.read_text()) == {"version": "cfg-42", "yaml": "tags: {}\n"}
        assert stored.stat().st_mode & 0o777 == 0o600
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        second = subprocess.Popen([AGENT, "--config", str(config), "--no-sensors"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(second)
        _wait(lambda: len(server.received.hellos) >= 2, "the second hello")
        assert server.received.hellos[-1].config_version == "cfg-42"
        assert "sensor:" not in " ".join(server.received.hellos[-1].capabilities)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        server.stop()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0,
          diagnose: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {diagnose()}"
        time.sleep(0.05)
