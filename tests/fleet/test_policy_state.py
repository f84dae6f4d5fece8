"""Fleet-wide policy state: real collectors on one PostgreSQL, agents streaming to different ones.

One policy process of the fleet evaluates the shared event log (collector/policy/fleet.py), so a
user's window spans hosts and collectors, and every alert fires exactly once: across collectors,
when the evaluator's collector crashes mid-window (and mid-sequence), when both collectors restart
at once, and when PostgreSQL stops mid-stream. "Exactly once" is read where it is decided: the
alerts in the store and in every collector's sink, once the evaluator's cursors have reached every
stored event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.fleet.harness import Fleet, StreamingAgent
from tests.pg import PgCluster

pytestmark = pytest.mark.slow

Agents = Callable[[str, list[int]], StreamingAgent]

POLICY = """
policies:
  - id: user-drip
    title: Many files copied by one user
    severity: high
    when: {event.action: file.copy}
    aggregate: {by: [user.name], window: 10m, count: {gte: 40}}
    suppress: {by: [user.name], window: 8s}
    summary: "{count} files copied by {user.name}"
    tags: [exfil]
  - id: archive-then-copy
    title: Archive made, then copied
    severity: high
    sequence:
      by: [agent.id, user.name]
      within: 10m
      steps:
        - name: archive
          when: {event.action: file.archive}
        - name: copy
          when: {event.action: file.copy}
    summary: "{user.name} archived, then copied"
    tags: [exfil]
"""


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    policy = tmp_path / "drip.yaml"
    policy.write_text(POLICY)
    two = Fleet(tmp_path / "fleet", pg_url, 2, policies=(policy,))
    yield two
    two.close()


@pytest.fixture
def agent(fleet: Fleet) -> Iterator[Agents]:
    """Start a StreamingAgent `name` listing the collectors of `order`; all are stopped afterwards."""
    started: list[StreamingAgent] = []

    def start(name: str, order: list[int]) -> StreamingAgent:
        started.append(StreamingAgent(fleet, name, order))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def _settled(fleet: Fleet, agents: list[StreamingAgent], alerts: int) -> None:
    """Wait until everything emitted is stored and evaluated; then exactly `alerts` user-drip alerts."""
    for agent in agents:
        wait_for(agent.acked, 60, f"{agent.host}'s events acknowledged", fleet.diagnose)
    wait_for(lambda: fleet.evaluated(len(agents)), 30, "the evaluator's cursors at every stored event",
             fleet.diagnose)  # fmt: skip
    wait_for(lambda: len(fleet.stored_alerts("user-drip")) >= alerts, 10, "the alerts", fleet.diagnose)
    assert len(fleet.stored_alerts("user-drip")) == alerts, fleet.diagnose()
    wait_for(lambda: len(fleet.alerts("user-drip")) >= alerts, 10, "the alerts in the sinks", fleet.diagnose)
    # delivery is at least once (docs/alerts.md): a crash between a delivery and the outbox
    # forgetting it sends that alert again, under its id
    assert len({a["id"] for a in fleet.alerts("user-drip")}) == alerts


def test_a_users_copies_on_two_hosts_through_two_collectors_fire_once(fleet: Fleet, agent: Agents) -> None:
    fleet.start_collector(0)
    fleet.start_collector(1)
    host_a, host_b = agent("host-a", [0]), agent("host-b", [1])
    host_a.copies("alice", 20)
    host_b.copies("alice", 19)
    host_b.copies("bob", 30)  # another user's copies count for bob only
    _settled(fleet, [host_a, host_b], 0)
    host_b.copies("alice", 1)  # the 40th, on host B
    _settled(fleet, [host_a, host_b], 1)
    (alert,) = fleet.stored_alerts("user-drip")
    assert alert["user.name"] == "alice" and alert["count"] == 40
    assert fleet.leader() in (0, 1)


def test_the_evaluators_collector_crashing_mid_window_hands_over_and_fires_once(
    fleet: Fleet, agent: Agents
) -> None:
    fleet.start_collector(0)
    wait_for(lambda: fleet.leader() == 0, 30, "collector 0 to lead", fleet.diagnose)
    fleet.start_collector(1)
    roaming = agent("roaming", [0, 1])  # streams to the leader's collector, 1 when it is gone
    other = agent("other", [1])
    roaming.copies("carol", 25)
    other.copies("carol", 10)
    roaming.copies("carol", 1, action="file.archive")  # a sequence's first step, before the crash
    _settled(fleet, [roaming, other], 0)  # 35 in carol's window, held by collector 0's evaluator
    assert not fleet.stored_alerts("archive-then-copy")
    fleet.crash(0)
    roaming.copies("carol", 5)  # the 40th onwards, through collector 1 after the agent fails over
    wait_for(lambda: fleet.leader() == 1, 30, "collector 1 to take the lead over", fleet.diagnose)
    _settled(fleet, [roaming, other], 1)
    (alert,) = fleet.stored_alerts("user-drip")
    assert alert["count"] == 40
    assert "windows rebuilt from 36 stored events" in fleet.collector(1).log_text()
    # The sequence the agent began on collector 0 ends on collector 1: once.
    (sequence,) = fleet.stored_alerts("archive-then-copy")
    assert sequence["host.name"] == "roaming"


def test_both_collectors_restarted_at_once_one_leads_and_nothing_fires_twice(
    fleet: Fleet, agent: Agents
) -> None:
    for index in (0, 1):
        fleet.start_collector(index)
    host_a, host_b = agent("host-a", [0, 1]), agent("host-b", [1, 0])
    host_a.copies("dave", 20)
    host_b.copies("dave", 20)
    _settled(fleet, [host_a, host_b], 1)  # the first alert opens dave's 8 s suppression window
    host_a.copies("dave", 40)  # a repeat: folded into the open window, not sent
    _settled(fleet, [host_a, host_b], 1)
    fleet.crash(0)
    fleet.crash(1)
    fleet.start_collectors(0, 1)
    wait_for(lambda: fleet.leader() is not None, 30, "one collector to lead", fleet.diagnose)
    host_b.copies("dave", 1)
    # The window the crashed evaluator opened survives it: one follow-up carries the folded repeat.
    _settled(fleet, [host_a, host_b], 2)
    restarted = fleet.collector(0).log_text() + fleet.collector(1).log_text()
    assert "and 1 open suppression windows" in restarted, "the window closed before the crash"
    follow_up = fleet.stored_alerts("user-drip")[-1]
    assert follow_up["exfilguard.alert.repeats"] == 1
    assert follow_up["exfilguard.alert.repeat_of"] == fleet.stored_alerts("user-drip")[0]["id"]
    leads = [fleet.collector(i).log_text().count("this collector leads") for i in (0, 1)]
    assert sum(leads) == 2, leads  # one lead before the restart, one after: never two at a time


def test_postgresql_stopped_mid_stream_resumes_from_the_cursor(
    fleet: Fleet, agent: Agents, pg_cluster: PgCluster
) -> None:
    fleet.start_collector(0)
    fleet.start_collector(1)
    host_a, host_b = agent("host-a", [0]), agent("host-b", [1])
    host_a.copies("erin", 30)
    host_b.copies("frank", 1)
    _settled(fleet, [host_a, host_b], 0)
    pg_cluster.stop("fast")  # clients cut off mid-stream; what was committed stays
    try:
        host_a.copies("erin", 5)
        host_b.copies("erin", 5)  # the 40th, while the store is down: nothing can be stored
    finally:
        pg_cluster.start()
    _settled(fleet, [host_a, host_b], 1)
    host_b.copies("erin", 35)  # inside the suppression window: folded, its follow-up comes later
    _settled(fleet, [host_a, host_b], 1)
    assert fleet.stored_count() == 76
