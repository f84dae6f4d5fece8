"""The fleet file (defaults < groups < hosts, checked against the agent's schema) and the collector's
push over a real stream: sent when the agent's version differs, at hello and after a reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from collector.fleet import config as fleetconfig
from common.yamlfile import YamlError
from protos import exfilguard_pb2 as pb
from tests.helpers import AgentStream, start_collector, write_collector_config

FLEET = """\
defaults:
  tags:
    /srv/db: [database]
  heartbeat_seconds: 10
groups:
  finance:
    hosts: ["FIN-*"]
    settings:
      tags: {/srv/ledger: [finance]}
      sensors: {mass_read_files: 5}
  pilots:
    agents: [agent-7]
    settings:
      heartbeat_seconds: 5
hosts:
  fin-ws-07:
    tags: {/srv/db: []}
  agent-7:
    batch: {max_delay_ms: 50}
"""


def _fleet(tmp_path: Path, text: str = FLEET) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_levels_merge_in_order_and_versions_follow_content(tmp_path: Path) -> None:
    fleet = fleetconfig.load(_fleet(tmp_path))
    plain = fleet.effective("agent-1", "ws-1")
    assert plain.sources == ("defaults",)
    assert plain.settings == {"tags": {"/srv/db": ["database"]}, "heartbeat_seconds": 10}
    fin = fleet.effective("agent-2", "fin-ws-07")  # host globs are case-insensitive
    assert fin.sources == ("defaults", "groups.finance", "hosts.fin-ws-07")
    assert fin.settings["tags"] == {"/srv/db": [], "/srv/ledger": ["finance"]}  # [] reaches the agent
    assert fin.settings["sensors"] == {"mass_read_files": 5}
    pilot = fleet.effective("agent-7", "ws-9")
    assert pilot.sources == ("defaults", "groups.pilots", "hosts.agent-7")
    assert (pilot.settings["heartbeat_seconds"], pilot.settings["batch"]) == (5, {"max_delay_ms": 50})
    assert len({plain.version, fin.version, pilot.version}) == 3
    assert all(len(v) == fleetconfig.VERSION_CHARS for v in (plain.version, fin.version))
    # The version is of the content: another file giving the same settings gives the same version.
    same = fleetconfig.load(_fleet(tmp_path, "hosts:\n  '*':\n    heartbeat_seconds: 10\n"
                                              "    tags: {/srv/db: [database]}\n"))
    assert same.effective("x", "y").version == plain.version
    assert yaml.safe_load(plain.yaml()) == plain.settings
    assert fleetconfig.load(_fleet(tmp_path, "")).effective("a", "b").version == ""  # agent.yaml alone


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("defaults:\n  spool: {max_events: 5}\n", "fleet.yaml:2:3: defaults.spool: unknown key"),
        ("defaults:\n  tls: {insecure_loopback: true}\n", "fleet.yaml:2:3: defaults.tls: unknown key"),
        ("groups:\n  g:\n    host: [a]\n", "fleet.yaml:3:5: groups.g.host: unknown key"),
        ("hosts:\n  ws-1:\n    heartbeat_seconds: 0\n", "fleet.yaml:3:5: hosts.ws-1.heartbeat_seconds: "),
        ("hosts:\n  ws-1:\n    sensors: {fanotify: maybe}\n",
         "fleet.yaml:3:15: hosts.ws-1.sensors.fanotify: "),
        ("defaults:\n  tags: {/a: [x]}\n  tags: {/b: [y]}\n", "fleet.yaml:3:3: defaults.tags: duplicate key"),
        ("- just a list\n", "fleet.yaml:1:1: expected a mapping"),
    ],
)
def test_bad_fleet_file_names_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(YamlError) as err:
        fleetconfig.load(_fleet(tmp_path, text))
    assert where in str(err.value)


def test_reload_keeps_the_previous_config_when_the_file_breaks(tmp_path: Path) -> None:
    path = _fleet(tmp_path)
    source = fleetconfig.FleetSource(path)
    before = source.current
    assert source.check() is None
    path.write_text("defaults:\n  heartbeat_seconds: -1\n")
    assert source.check() is False
    assert source.current is before and source.last_error is not None
    assert source.last_error.key == "defaults.heartbeat_seconds"
    path.write_text("defaults:\n  heartbeat_seconds: 2\n")
    assert source.check() is True
    assert source.current.effective("a", "b").settings == {"heartbeat_seconds": 2}


# Known to flake (one failure in several runs, cause not yet found: CONTRIBUTING.md); one rerun.
@pytest.mark.flaky(reruns=1)
def test_collector_pushes_on_version_mismatch_and_after_a_reload(tmp_path: Path) -> None:
    fleet_path = _fleet(tmp_path)
    config = write_collector_config(
        tmp_path / "c", agent_config=str(fleet_path), agent_config_reload_seconds=0.1
    )
    expected = fleetconfig.load(fleet_path).effective("agent-1", "ws-1")
    with start_collector(config) as collector:
        hello = pb.Hello(agent_id="agent-1", hostname="ws-1", version="1", capabilities=["config-push"])
        with AgentStream(collector.address, None, first=pb.AgentMessage(hello=hello)) as stream:
            assert stream.receive() == pb.CollectorMessage(ack=pb.Ack(sequence=0))
            pushed = stream.receive()
            assert pushed is not None and pushed.config.version == expected.version
            assert yaml.safe_load(pushed.config.yaml) == expected.settings

            fleet_path.write_text(FLEET.replace("heartbeat_seconds: 10", "heartbeat_seconds: 11"))
            again = stream.receive()  # pushed to the connected stream after the file changed
            assert again is not None and again.WhichOneof("body") == "config"
            assert again.config.version != expected.version
            assert yaml.safe_load(again.config.yaml)["heartbeat_seconds"] == 11

        current = fleetconfig.load(fleet_path).effective("agent-1", "ws-1").version
        up_to_date = pb.Hello(agent_id="agent-1", hostname="ws-1", config_version=current)
        with AgentStream(collector.address, None, first=pb.AgentMessage(hello=up_to_date)) as stream:
            assert stream.receive() == pb.CollectorMessage(ack=pb.Ack(sequence=0))
            stream.heartbeat()
            stream.send_events([])
            # Only the batch's ack: an agent that runs its version gets no config.
            nxt = stream.receive()
            assert nxt is not None and nxt.WhichOneof("body") == "ack"
        assert collector.stop() == 0


def test_shipped_example_is_valid() -> None:
    fleet = fleetconfig.load(Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml")
    fin = fleet.effective("x", "FIN-WS-07")
    assert fin.sources == ("defaults", "groups.finance", "hosts.fin-ws-07")
    assert fin.settings["tags"]["/srv/db"] == [] and fin.settings["sensors"]["mass_read_files"] == 20
    lab = fleet.effective("3f2c9a7e-0d1b-4a55-9c1e-5b8f2d7a9e10", "ws-1")
    assert lab.settings["removable"] == {"include_loop": True}
