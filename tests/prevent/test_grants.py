"""Grants end to end without a stick: `exfilguard exception grant` (a real process) records and
signs, the collector's push carries the host's active grants, and the agent honours only what
verifies against the key it pinned from the stream (agent/prevent/grants.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from agent import central
from agent.prevent import grants
from collector.evidence.keys import public_key
from collector.fleet.config import FleetConfig
from collector.fleet.grants import ActiveGrants
from collector.store import open_store
from collector.store.grants import GrantRecord
from common.agentconfig import AgentConfig, PreventSettings
from common.ecstime import ecs_now
from protos import exfilguard_pb2 as pb
from tests.helpers import run_cli, wait_for, write_collector_config

HOST = socket.gethostname()


@pytest.fixture
def collector_yaml(tmp_path: Path) -> Path:
    path = write_collector_config(tmp_path / "collector")
    open_store(str(path.parent / "collector.db")).close()  # as the collector makes it at its first start
    return path


def _grant(config: Path, *args: str) -> dict[str, str]:
    done = run_cli("exception", "grant", "--config", str(config), "--json", *args, env={"SUDO_USER": "carol"})
    assert done.returncode == 0, done.stderr
    granted: dict[str, str] = json.loads(done.stdout)
    return granted


def _active(config: Path) -> list[GrantRecord]:
    store = open_store(str(config.parent / "collector.db"), readonly=True)
    try:
        return store.grants(active_at=ecs_now())
    finally:
        store.close()


def _pushed_to_agent(config: Path, key: str, host: str = HOST) -> PreventSettings:
    """What the collector pushes to `host` now, as the agent parses and merges it."""
    active = ActiveGrants(key)
    active.refresh(_active(config))
    effective = FleetConfig("").effective("agent-1", host, active)
    pushed = central.parse(effective.version, effective.yaml())
    return central.effective(AgentConfig(), pushed).prevent


def test_a_grant_is_recorded_signed_pushed_to_its_host_and_verified(
        collector_yaml: Path, tmp_path: Path) -> None:
    granted = _grant(collector_yaml, "--host", HOST.upper(), "--user", "alice", "--device", "EG-1",
                     "--for", "2h", "--note", "INC-4711 imaging")
    assert (granted["user"], granted["host"], granted["granted_by"], granted["revoked_at"]) == (
        "alice", HOST.lower(), "carol", "")
    listed = run_cli("exception", "list", "--config", str(collector_yaml))
    assert granted["id"] in listed.stdout and "INC-4711 imaging" in listed.stdout
    b64 = public_key(collector_yaml.parent).b64()  # the CLI signed with the collector's evidence key

    prevent = _pushed_to_agent(collector_yaml, b64)
    assert prevent.grant_key == b64 and [e.id for e in prevent.exceptions] == [granted["id"]]
    assert _pushed_to_agent(collector_yaml, b64, host="other-host").exceptions == []

    state = tmp_path / "agent-state"
    state.mkdir()
    reported: list[pb.Event] = []
    unpinned = grants.honoured(prevent, state, reported.append, host=HOST)
    assert unpinned.exceptions == [] and "no grant key pinned" in reported[-1].event.reason
    grants.pin(state, prevent.grant_key)  # as a push over the stream does
    assert grants.honoured(prevent, state, reported.append, host=HOST).exceptions == prevent.exceptions
    assert len(reported) == 1

    # edited after it was granted (another user, a later end, another note): refused and reported
    grant = prevent.exceptions[0]
    for change in ({"user": "mallory"}, {"until": grant.until.replace(year=grant.until.year + 1)},
                   {"note": "whatever"}, {"device": ""}):
        tampered = prevent.model_copy(update={"exceptions": [grant.model_copy(update=change)]})
        assert grants.honoured(tampered, state, reported.append, host=HOST).exceptions == []
        assert reported[-1].event.action == "prevent.exception_refused"
        assert "does not verify" in reported[-1].event.reason
    # a true grant copied to another workstation
    assert grants.honoured(prevent, state, reported.append, host="ws-99").exceptions == []
    assert "not this one" in reported[-1].event.reason
    # an entry written by hand, unsigned
    unsigned = PreventSettings.model_validate({"exceptions": [{"user": "alice", "until": grant.until}]})
    assert grants.honoured(unsigned, state, reported.append, host=HOST).exceptions == []
    assert "not signed" in reported[-1].event.reason


def test_revoked_and_expired_grants_leave_the_push(collector_yaml: Path) -> None:
    first = _grant(collector_yaml, "--host", HOST, "--user", "alice", "--for", "2h", "--note", "INC-1")
    second = _grant(collector_yaml, "--host", HOST, "--user", "bob", "--for", "2h", "--note", "INC-2")
    active = ActiveGrants("a2V5")
    assert active.refresh(_active(collector_yaml)) is True
    assert active.refresh(_active(collector_yaml)) is False  # nothing changed: nothing to push
    before = FleetConfig("").effective("agent-1", HOST, active).version
    done = run_cli("exception", "revoke", first["id"], "--by", "dave", "--config", str(collector_yaml))
    assert done.returncode == 0, done.stderr
    assert "by dave" in done.stdout
    again = run_cli("exception", "revoke", first["id"], "--config", str(collector_yaml))
    assert again.returncode == 3
    assert active.refresh(_active(collector_yaml)) is True
    after = FleetConfig("").effective("agent-1", HOST, active)
    assert after.version != before
    assert [e["id"] for e in after.settings["prevent"]["exceptions"]] == [second["id"]]
    short = _grant(collector_yaml, "--host", HOST, "--user", "carl", "--for", "1s", "--note", "INC-3")
    wait_for(lambda: short["id"] not in [g.id for g in _active(collector_yaml)], 10,
             "the short grant to expire")
    active.refresh(_active(collector_yaml))
    assert [e["id"] for e in FleetConfig("").effective("agent-1", HOST, active).settings["prevent"][
        "exceptions"]] == [second["id"]]
    listed = run_cli("exception", "list", "--all", "--json", "--config", str(collector_yaml))
    states = {g["id"]: g["state"] for g in json.loads(listed.stdout)}
    assert states[first["id"]].startswith("revoked") and states[first["id"]].endswith("by dave")
    assert states[short["id"]] == "expired"
    assert {g["id"]: g["revoked_by"] for g in json.loads(listed.stdout)}[first["id"]] == "dave"
    assert states[second["id"]] == "active"
    assert run_cli("exception", "revoke", second["id"], "--config", str(collector_yaml)).returncode == 0
    assert active.refresh(_active(collector_yaml)) is True
    assert FleetConfig("").effective("agent-1", HOST, active).version == ""  # back to agent.yaml alone


def test_bad_grants_are_refused_before_anything_is_recorded(collector_yaml: Path) -> None:
    base = ("exception", "grant", "--config", str(collector_yaml), "--host", HOST, "--note", "x")
    for args in (("--user", "alice", "--for", "40d"), ("--user", "alice", "--for", "soon"),
                 ("--user", "", "--for", "2h"), ("--user", "a" * 65, "--for", "2h")):
        done = run_cli(*base, *args)
        assert done.returncode == 2, (args, done.stdout)
    assert _active(collector_yaml) == []
