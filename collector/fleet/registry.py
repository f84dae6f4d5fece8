"""The fleet registry's live side: which agents are connected, when each last spoke, who went silent.

Per-message bookkeeping stays in memory (a heartbeat from 2,000 agents must not cost
2,000 commits); `pending_updates()` hands the changed entries to the store, which the
server does about once a second and on shutdown. Gap counts are kept by the store itself,
in the transaction that stores the agent.gap event.

Silence: an agent that sent nothing (hello, batch or heartbeat) for `silent_after`
seconds is reported once, as a synthetic `agent.silent` event; it is re-armed when the
agent speaks again. Agents known from earlier runs count from the collector's start, so a
collector restart does not declare the whole fleet silent at once. The running collector asks
the store instead (`Store.claim_silent`, store/presence.py), which hears from every collector of
a fleet: `newly_silent` is this collector's view alone.

Stopped is not silent: an agent whose latest stored event is `agent.stop` (a service stop,
a machine shut down for the night) is `stopped` and raises no agent.silent (the pack's
low `agent-stopped` reports the stop itself). Any later event of the agent (its next
`agent.start`) ends that. A kill -9 or SIGSTOP sends no agent.stop, so it still goes silent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from collector.listeners import AGENT_SILENT, Mapping
from collector.store.base import AgentRecord, AgentUpdate
from common.ecstime import ecs_time_at
from protos import exfilguard_pb2 as pb

STOP_ACTION = "agent.stop"


@dataclass
class _Agent:
    id: str
    host: str = ""
    version: str = ""
    config_version: str = ""
    reports_config: bool = False  # its heartbeats say which central config it runs
    streams: int = 0
    last_message: float = 0.0  # monotonic
    last_message_wall: float | None = None
    last_heartbeat_wall: float | None = None
    backlog: int | None = None
    silent_reported: bool = False
    stopped: bool = False  # its latest stored event is agent.stop
    dirty: bool = False
    identity_dirty: bool = False


@dataclass(frozen=True)
class FleetSummary:
    """How many agents the registry knows, has connected, has reported silent; their spool backlog."""

    known: int
    connected: int
    silent: int
    backlog: int


class FleetRegistry:
    """Live state of every agent this collector has heard of."""

    def __init__(
        self,
        silent_after: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        collector: str | None = None,
    ) -> None:
        self.silent_after = silent_after
        self.collector = collector  # the name updates carry (store/presence.py)
        self._clock = clock
        self._wall = wall
        self._agents: dict[str, _Agent] = {}

    def load(self, records: Iterable[AgentRecord]) -> None:
        """Know the agents of earlier runs; their silence is counted from now."""
        now = self._clock()
        for record in records:
            known = _Agent(record.id, record.host, record.version, record.config_version, last_message=now,
                           stopped=record.stopped)
            self._agents.setdefault(record.id, known)

    def connected(self, hello: pb.Hello) -> None:
        """A stream opened with this hello."""
        agent = self._touch(hello.agent_id)
        agent.host, agent.version, agent.config_version = hello.hostname, hello.version, hello.config_version
        agent.reports_config = "config-push" in hello.capabilities
        agent.streams += 1
        agent.identity_dirty = True

    def disconnected(self, agent_id: str) -> None:
        """A stream of this agent ended (any way)."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.streams = max(0, agent.streams - 1)
            agent.dirty = True

    def seen(self, agent_id: str) -> None:
        """The agent sent something: it is alive."""
        self._touch(agent_id)

    def stored(self, agent_id: str, events: Sequence[pb.Event]) -> None:
        """Events of this agent were stored (in sequence order): did the last of them stop it?"""
        agent = self._agents.get(agent_id)
        if agent is None or not events:
            return
        agent.stopped = events[-1].event.action == STOP_ACTION  # only the last one says

    def is_stopped(self, agent_id: str) -> bool:
        """Whether the agent's latest stored event is a clean agent.stop."""
        agent = self._agents.get(agent_id)
        return agent is not None and agent.stopped

    def heartbeat(self, agent_id: str, heartbeat: pb.Heartbeat) -> None:
        """A heartbeat arrived, carrying the agent's spool backlog."""
        agent = self._touch(agent_id)
        agent.last_heartbeat_wall = agent.last_message_wall
        agent.backlog = heartbeat.backlog
        if agent.reports_config and heartbeat.config_version != agent.config_version:
            agent.config_version = heartbeat.config_version  # a pushed config was applied
            agent.identity_dirty = True

    def is_connected(self, agent_id: str) -> bool:
        """Whether the agent has an open stream now."""
        agent = self._agents.get(agent_id)
        return agent is not None and agent.streams > 0

    def connected_count(self) -> int:
        """How many agents have an open stream."""
        return sum(1 for a in self._agents.values() if a.streams > 0)

    def summary(self) -> FleetSummary:
        """Counts for metrics, in one pass: known, connected, silent, connected agents' backlog."""
        connected = silent = backlog = 0
        for agent in self._agents.values():
            if agent.streams > 0:
                connected += 1
                backlog += agent.backlog or 0
            if agent.silent_reported:
                silent += 1
        return FleetSummary(len(self._agents), connected, silent, backlog)

    def _touch(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(agent_id)
        agent.last_message = self._clock()
        agent.last_message_wall = self._wall()
        agent.silent_reported = False
        agent.dirty = True
        return agent

    def pending_updates(self) -> list[AgentUpdate]:
        """Registry changes since the last call, ready for `Store.update_agents`."""
        out: list[AgentUpdate] = []
        for agent in self._agents.values():
            if not agent.dirty:
                continue
            identity = agent.identity_dirty
            out.append(
                AgentUpdate(
                    agent.id,
                    host=agent.host if identity else None,
                    version=agent.version if identity else None,
                    connected=agent.streams > 0,
                    backlog=agent.backlog,
                    config_version=agent.config_version if identity else None,
                    seen=ecs_time_at(agent.last_message_wall) if agent.last_message_wall else None,
                    heartbeat=ecs_time_at(agent.last_heartbeat_wall) if agent.last_heartbeat_wall else None,
                    collector=self.collector,
                )
            )
            agent.dirty = agent.identity_dirty = False
        return out

    def newly_silent(self) -> list[Mapping]:
        """A synthetic agent.silent event for each agent that just crossed the silence limit."""
        now = self._clock()
        out: list[Mapping] = []
        for agent in self._agents.values():
            if agent.silent_reported or agent.stopped or now - agent.last_message < self.silent_after:
                continue
            agent.silent_reported = True
            out.append(self.silent_event(agent.id, agent.version, agent.host))
        return out

    def silent_event(self, agent_id: str, version: str, host: str, collector: str = "") -> Mapping:
        """The synthetic agent.silent event of one agent (for the policy engine's `agent-silent`)."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.silent_reported = True
        reason = f"no heartbeat for {self.silent_after:g} s"
        if collector:
            reason += f" (last stream on collector {collector})"
        return {
            "@timestamp": ecs_time_at(self._wall()),
            "event.id": str(uuid.uuid4()),
            "event.action": AGENT_SILENT,
            "event.kind": "collector",
            "event.reason": reason,
            "agent.id": agent_id,
            "agent.version": version,
            "host.name": host,
        }
