"""agent.yaml `prevent:` (issue 12): defaults, located errors, and a fleet file pushing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.fleet import config as fleetconfig
from common import agentconfig
from common.yamlfile import YamlError


def _agent_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_defaults_only_monitor() -> None:
    prevent = agentconfig.AgentConfig().prevent
    assert (prevent.removable_writes, prevent.devices, prevent.fail) == ("monitor", "monitor", "open")
    assert prevent.allowed_devices == []


def test_every_key_is_read(tmp_path: Path) -> None:
    config = agentconfig.load(_agent_yaml(tmp_path, (
        "prevent:\n  removable_writes: block\n  devices: read-only\n"
        "  allowed_devices: [EG-0001, '0781:5567', '0781:5567:4C53000123']\n"
        "  fail: closed\n  allowed_users: [imaging]\n  allowed_groups: [backup]\n"
        "  decision_timeout_ms: 200\n")))
    prevent = config.prevent
    assert (prevent.removable_writes, prevent.devices, prevent.fail) == ("block", "read-only", "closed")
    assert [agentconfig.allowed_device_entry(e) for e in prevent.allowed_devices] == [
        ("", "", "EG-0001"), ("0781", "5567", ""), ("0781", "5567", "4C53000123")]
    assert (prevent.allowed_users, prevent.allowed_groups, prevent.decision_timeout_ms) == (
        ["imaging"], ["backup"], 200)


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("prevent:\n  removable_writes: deny\n", 2, "prevent.removable_writes", "'monitor' or 'block'"),
        ("prevent:\n  devices: readonly\n", 2, "prevent.devices", "'read-only'"),
        ("prevent:\n  allowed_devices: ['07g1:5567']\n", 2, "prevent.allowed_devices", "VVVV:PPPP"),
        ("prevent:\n  allowed_devices: ['0781:5567:']\n", 2, "prevent.allowed_devices", "empty serial"),
        ("prevent:\n  fail: maybe\n", 2, "prevent.fail", "'open' or 'closed'"),
        ("prevent:\n  decision_timeout_ms: 5\n", 2, "prevent.decision_timeout_ms", "greater than or equal"),
        ("prevent:\n  blok: true\n", 2, "prevent.blok", "unknown key"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, text: str, line: int, key: str, words: str) -> None:
    path = _agent_yaml(tmp_path, text)
    with pytest.raises(YamlError) as err:
        agentconfig.load(path)
    assert (err.value.line, err.value.key) == (line, key)
    assert words in err.value.message


def test_fleet_file_pushes_prevent_and_it_merges_key_by_key(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("defaults:\n  prevent: {removable_writes: block, allowed_devices: [EG-1]}\n"
                     "hosts:\n  ws-9:\n    prevent: {devices: block}\n")
    pushed = fleetconfig.load(fleet).effective("agent-1", "ws-9").settings
    local = agentconfig.AgentConfig(prevent=agentconfig.PreventSettings(fail="closed"))
    running = agentconfig.apply_pushed(local, pushed).prevent
    assert (running.removable_writes, running.devices, running.fail) == ("block", "block", "closed")
    assert running.allowed_devices == ["EG-1"]
    fleet.write_text("hosts:\n  ws-9:\n    prevent: {devices: off}\n")
    with pytest.raises(YamlError) as err:
        fleetconfig.load(fleet)
    assert "hosts.ws-9.prevent.devices" in str(err.value)


def test_exceptions_need_a_time_zone_and_are_granted_not_written_in_the_fleet_file(tmp_path: Path) -> None:
    with pytest.raises(YamlError) as err:
        agentconfig.load(_agent_yaml(
            tmp_path, "prevent:\n  exceptions:\n    - {user: alice, until: 2026-12-02T12:00:00}\n"))
    assert err.value.key == "prevent.exceptions[0].until"
    assert "time zone" in err.value.message
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("hosts:\n  ws-9:\n    prevent:\n      exceptions:\n"
                     "        - {user: alice, device: EG-1, until: 2026-12-02T12:00:00Z, note: INC-4711}\n")
    with pytest.raises(YamlError) as err:
        fleetconfig.load(fleet)  # unsigned: the agent would refuse it; `exfilguard exception grant` signs
    assert (err.value.key, err.value.line) == ("hosts.ws-9.prevent.exceptions", 4)
