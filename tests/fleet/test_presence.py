"""Presence fleet-wide: two real collectors on one PostgreSQL, one agent streaming to each. Neither
collector calls the other's agent silent; `exfilguard agents` names each agent's collector; an
agent killed (-9) raises agent-silent exactly once across the fleet, a cleanly stopped one none.
The two share one signing key (docs/deploy.md), so the second does not complain about it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, wait_for
from tests.fleet.harness import Fleet

pytestmark = pytest.mark.slow

SILENT_AFTER = 2.0


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    two = Fleet(tmp_path, pg_url, 2, policies=(REPO / "policies" / "agent.yaml",),
                silent_agent_seconds=SILENT_AFTER)  # fmt: skip
    yield two
    two.close()


def _absent_for(seconds: float) -> None:
    """Let time pass to show that something does NOT happen (each collector checks every 0.75 s)."""
    time.sleep(seconds)


def test_agent_silent_fires_once_fleet_wide_and_only_for_agents_nobody_hears(fleet: Fleet) -> None:
    fleet.start_collector(0)
    fleet.share_signing_key(0, 1)  # one signing identity for the fleet
    fleet.start_collector(1)
    on_first = fleet.start_agent("ws-a", order=[0])
    on_second = fleet.start_agent("ws-b", order=[1])
    first_id, second_id = fleet.agent_id("ws-a"), fleet.agent_id("ws-b")
    names = [f"{socket.gethostname()}:{port}" for port in fleet.ports]  # collector.yaml has no name:

    expected = {first_id: (True, names[0]), second_id: (True, names[1])}
    wait_for(lambda: fleet.presence() == expected, 30, f"agents on collectors {expected}", fleet.diagnose)
    listed = {a["id"]: (a["connected"], a["collector"]) for a in fleet.registry(1)}  # exfilguard agents
    assert listed == expected
    # Both collectors now run past silent_agent_seconds, checking the fleet several times:
    # before, each raised a high agent-silent for the agent streaming to the other one.
    _absent_for(SILENT_AFTER * 1.5)
    assert fleet.alerts("agent-silent") == []

    on_second.kill9()  # no agent.stop: silence
    assert on_first.terminate() == 0  # agent.stop: a clean stop is not silence
    wait_for(lambda: fleet.alerts("agent-silent") != [], 30, "agent-silent for the killed agent",
             fleet.diagnose)  # fmt: skip
    _absent_for(SILENT_AFTER)  # both collectors check again: neither may raise it a second time
    alerts = fleet.alerts("agent-silent")
    assert [a["agent.id"] for a in alerts] == [second_id]
    records = {a["id"]: a for a in fleet.registry(0)}
    assert (records[first_id]["connected"], records[first_id]["stopped"]) == (False, True)
    assert records[second_id]["collector"] == names[1]
    # The second checked the fleet's signing identity at its start: one key, no complaint.
    assert "signs exports with key" not in fleet.collector(1).log_text()
