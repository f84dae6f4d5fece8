"""The storage interface every collector store implements (SQLite and PostgreSQL).

All methods are synchronous; the server calls them from one writer thread, off the
event loop. Times are ECS strings (UTC, microseconds, trailing Z), which sort as text.

Errors:
    StoreError           root of everything a store raises (a common.errors.LocatedError)
    StoreUnavailable     the store cannot be opened or reached (missing file, permissions, server
                         down, authentication failed, no such database, connection lost)
    StoreCorrupt         the store exists but is not a usable ExfilGuard store (schema, integrity)
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from collector.store.outage import Outage
from common.errors import LocatedError
from protos import exfilguard_pb2 as pb

if TYPE_CHECKING:
    from collector.store.domain import DomainSql
    from collector.store.grants import GrantRecord
    from collector.store.ledger import Ledger
    from collector.store.triage import TriageEntry

Mapping = dict[str, Any]


class StoreError(LocatedError):
    """Any store failure; `location` is the path or URL of the store, `reason` (or `message`) why."""

    @property
    def message(self) -> str:
        """What went wrong (the `reason`, by the name store callers have always used)."""
        return self.reason


class StoreUnavailable(StoreError):
    """The store cannot be opened."""


class StoreCorrupt(StoreError):
    """The store is not a usable ExfilGuard store (unknown schema version, damaged file)."""


@dataclass(frozen=True)
class EventFilter:
    """Which events `Store.events` yields; unset fields do not filter. `until` is exclusive."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    host: str | None = None
    user: str | None = None
    agent: str | None = None
    action: str | None = None
    device_serial: str | None = None
    event_ids: tuple[str, ...] | None = None  # only these events (an alert's evidence)


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts `Store.alerts` lists; an unset field does not filter, a list keeps alerts with
    one of its values: triage statuses (collector/store/triage.py), severities, policy ids,
    `host.name`s, `user.name`s or `device.serial`s."""

    statuses: Sequence[str] | None = None
    severities: Sequence[str] | None = None
    policies: Sequence[str] | None = None
    hosts: Sequence[str] | None = None
    users: Sequence[str] | None = None
    devices: Sequence[str] | None = None


@dataclass(frozen=True)
class IngestResult:
    """Outcome of storing one agent's batch.

    `watermark` is the highest contiguous sequence stored for the agent; `stored` holds
    the events that were new (duplicates left out), in sequence order, and `data` their protobuf
    bytes as written to the events table (same order): what is handed on to other processes
    (the policy process's pipe) without serializing each event again.
    """

    agent_id: str
    watermark: int
    stored: list[pb.Event] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class AgentUpdate:
    """A change to one registry entry; fields left as None keep their stored value."""

    id: str
    host: str | None = None
    version: str | None = None
    connected: bool | None = None
    backlog: int | None = None
    config_version: str | None = None
    seen: str | None = None  # ECS time of the latest message from the agent
    heartbeat: str | None = None  # ECS time of the latest heartbeat
    collector: str | None = None  # the collector reporting this (its stream, when connected)


@dataclass(frozen=True)
class CollectorRecord:
    """One collector of the fleet, as its presence lease says (store/presence.py)."""

    name: str
    listen: str
    started: str
    seen: str  # ECS time of its latest lease renewal
    signing_key: str = ""  # fingerprint of the key it signs exports with


@dataclass(frozen=True)
class AgentRecord:
    """One agent in the fleet registry."""

    id: str
    host: str = ""
    version: str = ""
    first_seen: str = ""
    last_seen: str = ""
    last_heartbeat: str = ""
    connected: bool = False
    backlog: int = 0
    gaps: int = 0  # agent.gap events received
    lost: int = 0  # events the agent reported lost (sum of exfilguard.gap.lost)
    config_version: str = ""
    watermark: int = 0  # highest contiguous sequence stored
    stopped: bool = False  # its last stored event is agent.stop: a clean stop, not silence
    collector: str = ""  # the collector its stream is (or was last) on

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by `exfilguard agents --json`): the fields in this order."""
        return asdict(self)


class Store(abc.ABC):
    """Events (idempotent on agent id + sequence, hash-chained per agent), alerts and the fleet registry."""

    location: str
    _outage: Outage | None = None

    @property
    def outage(self) -> Outage:
        """How this process's retrying loops log the store being unavailable (collector/store/outage.py)."""
        if self._outage is None:
            self._outage = Outage(self.location)
        return self._outage

    @abc.abstractmethod
    def ingest_batches(
        self, batches: Sequence[tuple[str, Sequence[pb.Event]]], *, seal: bool = True
    ) -> list[IngestResult]:
        """Store several agents' batches in ONE transaction (group commit); one result per batch.

        Events at or below the agent's watermark, or already stored, are skipped. Events must
        already carry `agent.id == agent_id` and `event.sequence > 0` (the ingest service checks).
        With `seal`, the hash chain is extended in the same transaction; without, `seal()`
        (the collector's sealer process) does it later.
        """

    def ingest(self, agent_id: str, events: Sequence[pb.Event]) -> int:
        """Store one batch; returns the agent's new watermark (highest contiguous sequence)."""
        return self.ingest_batches([(agent_id, events)])[0].watermark

    @abc.abstractmethod
    def seal(self, limit: int | None = None) -> int:
        """Chain stored but unchained events, in sequence order inside each agent's stored prefix.

        At most about `limit` events (None: all); returns how many were chained.
        """

    @abc.abstractmethod
    def watermark(self, agent_id: str) -> int:
        """Highest contiguous sequence stored for the agent (0 when none): what the collector acks."""

    @abc.abstractmethod
    def events(self, where: EventFilter | None = None) -> Iterator[Mapping]:
        """Stored events as ECS mappings in (agent id, sequence) order, streamed.

        Each mapping carries `exfilguard.chain.hash` (hex) once the event is chained: every
        lower sequence of its agent is stored and sealing has reached it.
        """

    @abc.abstractmethod
    def count_events(self, agent_id: str | None = None) -> int:
        """How many events are stored (for one agent, or all)."""

    def unsealed(self) -> int | None:
        """Events in the agents' stored prefixes not chained yet (the sealer's lag); None: unknown."""
        return None

    @abc.abstractmethod
    def chain_head(self, agent_id: str) -> tuple[int, bytes]:
        """(last chained sequence, its chain value); (0, 32 zero bytes) before any."""

    @abc.abstractmethod
    def add_alert(self, alert: Mapping, sinks: Sequence[str] = ()) -> None:
        """Store an alert (the JSON object sinks receive); needs `id`, `@timestamp`, `policy.id`.

        Storing the same alert id twice replaces it (suppression updates its count); its triage
        status and history are kept. In the same transaction the alert becomes owed to each of
        `sinks` (collector/store/outbox.py) until `settle` names the delivery.
        """

    @abc.abstractmethod
    def owed(self, sinks: Sequence[str], limit: int = 10_000) -> list[tuple[str, Mapping]]:
        """(sink, alert) of deliveries still owed to `sinks`, the oldest alert first, at most `limit`."""

    @abc.abstractmethod
    def settle(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Forget owed deliveries, each (sink, alert id), that have their final answer."""

    @abc.abstractmethod
    def alerts(
        self, limit: int = 100, since: str | None = None, where: AlertFilter | None = None
    ) -> list[Mapping]:
        """The newest `limit` alerts at or after `since` (an ECS time string) that `where` keeps,
        oldest first.

        Each carries its current triage `status` (collector/store/triage.py).
        """

    @abc.abstractmethod
    def alert(self, alert_id: str) -> Mapping | None:
        """One alert with its current `status`, or None if no alert has this id."""

    @abc.abstractmethod
    def alert_history(self, alert_id: str) -> list[TriageEntry]:
        """The alert's triage history, oldest first (empty while it was never triaged)."""

    @abc.abstractmethod
    def triage_alerts(
        self, alert_ids: Sequence[str], status: str, *, by: str, note: str
    ) -> list[TriageEntry]:
        """Set the alerts' status and append one history entry each, all in one transaction.

        Raises AlertNotFound (naming every unknown id, nothing changed) or InvalidTriage
        (status, name or note outside the limits of collector/store/triage.py).
        """

    @abc.abstractmethod
    def update_agents(self, updates: Sequence[AgentUpdate]) -> None:
        """Create or update registry entries in one transaction (first_seen set on creation)."""

    def upsert_agent(
        self,
        agent_id: str,
        *,
        host: str | None = None,
        version: str | None = None,
        connected: bool | None = None,
        backlog: int | None = None,
        config_version: str | None = None,
        seen: str | None = None,
        heartbeat: str | None = None,
    ) -> None:
        """Create or update one registry entry; fields left as None keep their stored value."""
        update = AgentUpdate(agent_id, host, version, connected, backlog, config_version, seen, heartbeat)
        self.update_agents([update])

    @abc.abstractmethod
    def agents(self) -> list[AgentRecord]:
        """The whole fleet registry, ordered by agent id."""

    @abc.abstractmethod
    def mark_all_disconnected(self, collector: str | None = None) -> None:
        """Clear the connected flags (collector start and shutdown); only `collector`'s when named."""

    @abc.abstractmethod
    def claim_silent(self, seen_before: str, now: str) -> list[AgentRecord]:
        """Mark agents no collector heard from since `seen_before` (and not cleanly stopped) silent as
        of `now`, and return them; each silent agent is returned once, fleet-wide, until it speaks again."""

    @abc.abstractmethod
    def renew_lease(
        self,
        collector: str,
        listen: str,
        now: str,
        expired_before: str,
        *,
        start: bool = False,
        signing_key: str = "",
    ) -> int:
        """Renew `collector`'s presence lease (`start`: also its start time and signing key fingerprint);
        clear connected flags left by collectors whose lease is older than `expired_before`. Returns
        how many flags were cleared."""

    @abc.abstractmethod
    def fleet_collectors(self) -> list[CollectorRecord]:
        """The collectors that have used this store, with their last lease renewal."""

    @abc.abstractmethod
    def add_grant(self, grant: GrantRecord) -> None:
        """Record a prevention exception an officer granted (store/grants.py); its id must be new."""

    @abc.abstractmethod
    def grants(self, *, host: str | None = None, active_at: str | None = None) -> list[GrantRecord]:
        """Recorded grants, oldest first: of one host (any case), and/or only those neither revoked
        nor expired at the ECS time `active_at`."""

    @abc.abstractmethod
    def revoke_grant(self, grant_id: str, at: str, by: str = "") -> GrantRecord | None:
        """Mark a grant revoked at `at` by the officer `by`; the revoked grant, None when no unrevoked
        grant has that id."""

    @abc.abstractmethod
    def domain(self) -> DomainSql:
        """The store's connection for the domain tables written once for both stores (devices,
        approvals and their history, baselines): collector/store/domain.py."""

    @abc.abstractmethod
    def ledger(self, *, owns_store: bool = False) -> Ledger:
        """The evidence ledger of this store, on the store's own connection.

        Closing the ledger closes the store only when `owns_store` (as `open_ledger` does).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store; pending writes are committed."""
