"""Central config on the agent: a real agent process gets pushes over real gRPC (a stand-in collector),
applies good ones live, refuses bad ones and keeps running what it had; and the merge rules."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import central
from common.agentconfig import AgentConfig
from protos import exfilguard_pb2 as pb
from tests.agent.fake_collector import FakeCollector

AGENT = str(Path(sys.executable).parent / "exfilguard-agent")


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def server() -> Iterator[FakeCollector]:
    fake = FakeCollector().start()
    yield fake
    fake.stop()


class _Agent:
    def __init__(self, tmp_path: Path, address: str) -> None:
        self.config = tmp_path / "agent.yaml"
        self.config.write_text(
            f"collector: {address}\nstate_dir: state\nreconnect_max_seconds: 0.5\nheartbeat_seconds: 30\n"
            "tags:\n  /srv/local: [local]\n"
        )
        self.stored = tmp_path / "state" / central.FILE_NAME
        self.log = tmp_path / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _Agent:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([AGENT, "--config", str(self.config), "--no-sensors"],
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _config_events(server: FakeCollector) -> list[pb.Event]:
    with server.received.lock:
        return [e for e in server.received.events.values() if e.event.action == "agent.config"]


def _has_config_event(server: FakeCollector, version: str) -> Callable[[], bool]:
    return lambda: any(e.exfilguard.config_version == version for e in _config_events(server))


def _beats(server: FakeCollector) -> list[pb.Heartbeat]:
    with server.received.lock:
        return list(server.received.heartbeats)


def test_good_push_runs_live_bad_push_is_refused_and_the_stored_one_survives_a_restart(
    tmp_path: Path, server: FakeCollector
) -> None:
    agent = _Agent(tmp_path, server.address).start()
    try:
        _wait(lambda: server.received.contiguous() >= 1, "agent.start at the collector")
        server.push_config(pb.AgentConfig(version="v1", yaml="heartbeat_seconds: 0.2\n"))
        # Heartbeats were every 30 s: the version is reported at once, then beats come every 0.2 s.
        _wait(lambda: any(b.config_version == "v1" for b in _beats(server)), "a heartbeat reporting v1", 10)
        reported = len(_beats(server))
        _wait(lambda: len(_beats(server)) >= reported + 3, "heartbeats at the pushed interval", 5)
        assert json.loads(agent.stored.read_text())["version"] == "v1"
        _wait(lambda: any(e.exfilguard.config_version == "v1" for e in _config_events(server)),
              "agent.config for v1")

        for version, text, why in [
            ("bad-1", "spool:\n  max_events: 5\n", "spool: unknown key"),  # not a pushable key
            ("bad-2", "tags:\n  relative/dir: [x]\n", "must be absolute"),
            ("bad-3", "sensors:\n  mass_read_files: 1\n", "sensors.mass_read_files"),
        ]:
            server.push_config(pb.AgentConfig(version=version, yaml=text))
            _wait(_has_config_event(server, version), f"agent.config refusing {version}")
            refusal = next(e for e in _config_events(server) if e.exfilguard.config_version == version)
            assert "refused" in refusal.event.reason and why in refusal.event.reason
        beats = len(_beats(server))
        _wait(lambda: len(_beats(server)) > beats, "a heartbeat after the refusals")
        assert _beats(server)[-1].config_version == "v1", "a refused push must not change the running version"
        assert json.loads(agent.stored.read_text())["version"] == "v1"
        assert agent.proc is not None and agent.proc.poll() is None
        assert agent.stop() == 0

        agent.start()
        _wait(lambda: len(server.received.hellos) >= 2, "the hello after the restart")
        assert server.received.hellos[-1].config_version == "v1"

        server.push_config(pb.AgentConfig(version="", yaml=""))  # no central config any more
        _wait(lambda: not agent.stored.exists(), "the stored central config removed")
        _wait(lambda: _beats(server)[-1].config_version == "" if _beats(server) else False,
              "a heartbeat reporting agent.yaml alone")
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_damaged_stored_config_falls_back_to_agent_yaml(tmp_path: Path, server: FakeCollector) -> None:
    agent = _Agent(tmp_path, server.address)
    agent.stored.parent.mkdir(parents=True)
    agent.stored.write_text('{"version": "v9", "yaml": "tags: {relative: [x]}\\n"}')
    agent.start()
    try:
        _wait(lambda: bool(server.received.hellos), "the hello")
        assert server.received.hellos[0].config_version == ""
        assert "stored central config not used" in agent.log.read_text()
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_pushed_keys_merge_over_agent_yaml() -> None:
    local = AgentConfig(
        tags={"/srv/a": ["a"], "/srv/b": ["b"]},
        sensors={"mass_read_files": 7, "archive_min_files": 4},  # type: ignore[arg-type]
        heartbeat_seconds=3,
    )
    pushed = central.parse("v2", "tags:\n  /srv/a: []\n  /srv/c: [c]\nsensors:\n  mass_read_files: 9\n")
    running = central.effective(local, pushed)
    assert running.tags == {"/srv/b": ["b"], "/srv/c": ["c"]}  # [] removed a local path
    assert (running.sensors.mass_read_files, running.sensors.archive_min_files) == (9, 4)
    assert running.heartbeat_seconds == 3 and running.state_dir == local.state_dir
    assert central.effective(local, central.parse("", "")) == local
    with pytest.raises(central.CentralConfigError, match="collector"):
        central.parse("v3", "collector: 10.0.0.1:1\n")  # never pushable: it could cut the agent off
