"""The SQL both stores share, written once: `SqlStore` (collector/store/sqlite.py, postgres.py).

Statements here use `?` placeholders; a `Dialect` says how a backend spells what differs:
its placeholder, "this column is one of a list", a field of an alert's JSON body, and an
alert's status in a store written before triage existed. Each backend keeps what really
differs: connecting, schema and upgrades, how it writes a batch of events (executemany or
COPY), its transactions and how a database error becomes a StoreError (`_all`, `_write`).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from collector.store import grants as grant_sql
from collector.store import outbox, presence, triage
from collector.store.base import (
    AgentRecord,
    AgentUpdate,
    AlertFilter,
    CollectorRecord,
    EventFilter,
    Mapping,
    Store,
    StoreError,
)
from collector.store.domain import DomainSql, Transaction
from collector.store.grants import GrantRecord
from collector.store.rows import stored_canonical
from common.ecstime import ecs_now, ecs_time
from protos import chain


@dataclass(frozen=True)
class Dialect:
    """How one database spells the few things the shared statements leave open."""

    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    in_list: str  # appended to a column: true when it is one of the list bound to its one `?`
    list_param: Callable[[Sequence[str]], Any]  # the bound value of such a list
    alert_field: Callable[[str], str]  # the SQL of a top-level field of alerts.body (JSON text)
    status_v1: str  # an alert's status in a store not upgraded to triage yet (from its body)
    select_alerts_v1: str  # body and that status, from alerts
    lock_rows: str  # appended to a SELECT inside a write transaction: lock the rows it reads

    def sql(self, statement: str) -> str:
        """`statement` with this dialect's placeholders."""
        return statement if self.placeholder == "?" else _respell(statement, self.placeholder)


@functools.lru_cache(maxsize=256)
def _respell(statement: str, placeholder: str) -> str:
    return statement.replace("?", placeholder)


SELECT_ALERTS = "SELECT body, status FROM alerts"
# Schema 2 -> 3, both backends: `watermark` meant the chained prefix in `chains` but the
# acknowledged (stored) one in Store.watermark(); the column is named for what it holds. The
# backends' _SCHEMA stays version 1's, so a new store is made by the same steps as an upgrade.
RENAME_SEALED = "ALTER TABLE chains RENAME COLUMN watermark TO sealed"
# Version 7 made an index of events by event id (the console's and `alerts show`'s evidence of
# several agents); version 10 drops it again: its random keys made every commit rewrite index
# pages all over the file, and ingest into a store of a million events fell to 0.15x (SQLite)
# and 0.26x (PostgreSQL) of its rate without it. Ingest outweighs those lookups.
DROP_EVENT_ID_INDEX = "DROP INDEX IF EXISTS events_event_id"
_AGENTS = (
    "SELECT a.id, a.host, a.version, a.first_seen, a.last_seen, a.last_heartbeat, a.connected,"
    " a.backlog, a.gaps, a.lost, a.config_version, COALESCE(c.stored, 0),"
    # the agent's latest stored action, through the (agent_id, sequence) key: agent.stop = stopped
    " (SELECT e.action FROM events e WHERE e.agent_id = a.id ORDER BY e.sequence DESC LIMIT 1),"
    " {collector} FROM agents a LEFT JOIN chains c ON c.agent_id = a.id ORDER BY a.id"
)
_EVENT_FILTERS = (  # (column, operator, EventFilter field) in the order clauses are written
    ("ts", ">=", "since"),
    ("ts", "<", "until"),
    ("host", "=", "host"),
    ("user_name", "=", "user"),
    ("agent_id", "=", "agent"),
    ("action", "=", "action"),
    ("device_serial", "=", "device_serial"),
)
_ALERT_FIELDS = (("hosts", "host.name"), ("users", "user.name"), ("devices", "device.serial"))


def link_rows(
    location: str, agent_id: str, before: int, head: bytes, rows: Iterable[tuple[Any, int, bytes]]
) -> tuple[int, bytes, list[tuple[bytes, Any]]]:
    """Chain stored rows (key, sequence, data) after `before`: (last chained, its value, (value, key)s).

    `key` is whatever the backend updates a row by (SQLite: its rowid). Stops at the first
    sequence that does not follow (inside the stored prefix that cannot happen; stopping is
    safer than chaining across a hole). Each link is `chain.record_link` of `stored_canonical`,
    written out here: this loop is most of the sealer's work, and a call costs as much as a hash.
    """
    from_bytes, sha256 = chain.canonical_stored, hashlib.sha256
    sealed = before
    values: list[tuple[bytes, Any]] = []
    add = values.append
    for key, seq, data in rows:
        if seq != sealed + 1:
            break
        text = from_bytes(data)
        if text is None:  # not as protobuf writes it, or a row no reader could take: the Event's way
            text = stored_canonical(location, agent_id, seq, bytes(data))
        head = sha256(head + sha256(text).digest()).digest()
        sealed = seq
        add((head, key))
    return sealed, head, values


@dataclass(slots=True)
class Prefix:
    """An agent's stored state: end of the contiguous stored prefix, highest stored sequence."""

    stored: int
    max_sequence: int


ABOVE_PREFIX = "SELECT sequence FROM events WHERE agent_id = ? AND sequence > ? ORDER BY sequence"


def contiguous_end(stored: int, sequences: Iterable[tuple[int]]) -> int:
    """Walk up from `stored` while the next sequence is present (a hole just filled).

    `sequences`: rows of the agent's sequences above `stored` in order (ABOVE_PREFIX).
    """
    for (seq,) in sequences:
        if seq != stored + 1:
            break
        stored = seq
    return stored


def fresh_events(batch: Iterable[Any], stored: int) -> dict[int, Any]:
    """The events of a batch above the agent's stored prefix, by sequence (a resend keeps the last)."""
    return {e.event.sequence: e for e in batch if e.event.sequence > stored}


def agent_params(updates: Sequence[AgentUpdate], now: str) -> list[dict[str, Any]]:
    """The named parameters of the registry upsert, one dict per update."""
    # vars, not dataclasses.asdict: the fields are flat, and asdict's deep copy was most of a
    # registry flush of thousands of heartbeating agents
    return [{**vars(u), "first_seen": u.seen or now} for u in updates]


def alert_row(location: str, alert: Mapping) -> tuple[str, str, str, str, str]:
    """(id, ts, policy_id, severity, body) of an alert; StoreError if a required field is missing."""
    try:
        return (
            str(alert["id"]),
            str(alert["@timestamp"]),
            str(alert["policy.id"]),
            str(alert.get("severity", "")),
            json.dumps(alert, sort_keys=True, default=str),
        )
    except KeyError as exc:
        raise StoreError(location, f"alert lacks required field {exc}") from exc


class SqlStore(Store):
    """What both SQL stores do the same way, on three primitives each backend provides."""

    dialect: ClassVar[Dialect]
    _lock: threading.Lock
    _readonly: bool
    _version: int  # the schema version of the store as opened
    _db: Any  # the backend's connection
    _domain: DomainSql | None

    @abc.abstractmethod
    def _open_domain(self) -> DomainSql:
        """The backend's view of its connection for the domain tables (collector/store/domain.py)."""

    def domain(self) -> DomainSql:
        """The device and baseline tables' view of this connection (collector/store/domain.py)."""
        if self._domain is None:
            self._domain = self._open_domain()
        return self._domain

    def close(self) -> None:
        """Close the connection (every write is already committed)."""
        with self._lock:
            self._db.close()

    @abc.abstractmethod
    def _all(self, sql: str, params: Sequence[Any], what: str = "query") -> list[Any]:
        """Every row of a read (under the store's lock); a database error is a StoreError naming `what`."""

    @abc.abstractmethod
    def _write(self, sql: str, params: Sequence[Any], what: str = "write") -> None:
        """One write statement in a transaction of its own (under the store's lock)."""

    @abc.abstractmethod
    def _statements(self, what: str) -> contextlib.AbstractContextManager[Transaction]:
        """One write transaction under the store's lock, for `?` statements (collector/store/domain.py);
        committed at the end of the block, rolled back on any error; a database error is a StoreError
        naming `what`."""

    def _one(self, sql: str, params: Sequence[Any], what: str = "query") -> Any:
        rows = self._all(sql, params, what)
        return rows[0] if rows else None

    def _q(self, statement: str) -> str:
        return self.dialect.sql(statement)

    def _writable(self) -> None:
        if self._readonly:
            raise StoreError(self.location, "store was opened read-only")

    # ------------------------------------------------------------------ events

    def _event_clauses(self, where: EventFilter, prefix: str = "") -> tuple[list[str], list[Any]]:
        """The WHERE clauses and parameters of an event filter (`prefix`: the events table alias)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, name in _EVENT_FILTERS:
            value = getattr(where, name)
            if value is not None:
                clauses.append(f"{prefix}{column} {op} ?")  # column and op: the fixed table above
                params.append(ecs_time(value) if name in ("since", "until") else value)
        if where.event_ids is not None:
            clauses.append(f"{prefix}event_id{self.dialect.in_list}")
            params.append(self.dialect.list_param(list(where.event_ids)))
        return clauses, params

    @property
    def sealed_column(self) -> str:
        """The `chains` column of the chained prefix: `sealed`, or `watermark` in a store older than
        schema 3 that a read-only view reads without upgrading it."""
        return "sealed" if self._version >= 3 else "watermark"

    def unsealed(self) -> int:
        """Events in the agents' stored prefixes not chained yet (one row per agent is read)."""
        sql = f"SELECT COALESCE(SUM(stored - {self.sealed_column}), 0) FROM chains"  # noqa: S608 (fixed)
        row = self._one(sql, ())
        return 0 if row is None else int(row[0])

    def chain_head(self, agent_id: str) -> tuple[int, bytes]:
        """(last chained sequence, its chain value) of one agent; (0, genesis) before any."""
        sql = f"SELECT {self.sealed_column}, head FROM chains WHERE agent_id = ?"  # noqa: S608 (fixed)
        row = self._one(self._q(sql), (agent_id,))
        return (0, chain.GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def count_events(self, agent_id: str | None = None) -> int:
        """How many events are stored (for one agent, or all)."""
        if agent_id is None:
            row = self._one("SELECT COUNT(*) FROM events", ())
        else:
            row = self._one(self._q("SELECT COUNT(*) FROM events WHERE agent_id = ?"), (agent_id,))
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ alerts

    def add_alert(self, alert: Mapping, sinks: Sequence[str] = ()) -> None:
        """Store (or replace, by id) an alert, owed to `sinks`; see `Store.add_alert`."""
        self._writable()
        row = alert_row(self.location, alert)
        with self._statements("storing an alert") as tx:
            # An upsert, not a replace: replacing the row would reset its triage status.
            tx.query(
                "INSERT INTO alerts (id, ts, policy_id, severity, body) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET ts = excluded.ts, policy_id = excluded.policy_id,"
                " severity = excluded.severity, body = excluded.body",
                row,
            )
            if sinks:
                tx.many(outbox.OWE, [(sink, row[0]) for sink in sinks])

    def owed(self, sinks: Sequence[str], limit: int = 10_000) -> list[tuple[str, Mapping]]:
        """(sink, alert) of deliveries still owed to `sinks`, the oldest alert first (store/outbox.py)."""
        if not sinks or self._version < 8:
            return []
        sql = self._q(outbox.OWED.format(in_list=self.dialect.in_list))
        params = (self.dialect.list_param(list(sinks)), max(0, limit))
        rows = self._all(sql, params, "reading the alert outbox")
        return [(str(sink), json.loads(str(body))) for sink, body in rows]

    def settle(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Forget deliveries (sink, alert id) that have their final answer (store/outbox.py)."""
        if deliveries:
            self._writable()
            with self._statements("settling alert deliveries") as tx:
                tx.many(outbox.SETTLE, [tuple(d) for d in deliveries])

    def _select_alerts(self) -> str:
        # Columns: body, status. A read-only view of a store not upgraded yet reads the bodies.
        if self._version >= 2:
            return SELECT_ALERTS
        return self.dialect.select_alerts_v1

    def alerts(
        self, limit: int = 100, since: str | None = None, where: AlertFilter | None = None
    ) -> list[Mapping]:
        """The newest `limit` alerts at or after `since` that `where` keeps, oldest first."""
        d = self.dialect
        where = where or AlertFilter()
        status = "status" if self._version >= 2 else d.status_v1
        sql = self._select_alerts() + " WHERE ts >= ?"
        params: list[Any] = [since or ""]
        for column, values in (
            (status, triage.check_statuses(self.location, where.statuses)),
            ("severity", where.severities),
            ("policy_id", where.policies),
            *((d.alert_field(field), getattr(where, name)) for name, field in _ALERT_FIELDS),
        ):
            if values is not None:
                sql += " AND " + column + d.in_list  # column: from the fixed table above
                params.append(d.list_param(list(values)))
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        params.append(max(0, limit))
        rows = self._all(self._q(sql), params, "reading alerts")
        return [triage.with_status(json.loads(str(r[0])), str(r[1])) for r in reversed(rows)]

    def alert(self, alert_id: str) -> Mapping | None:
        """One alert with its current status, or None."""
        row = self._one(self._q(self._select_alerts() + " WHERE id = ?"), (alert_id,), "reading an alert")
        return None if row is None else triage.with_status(json.loads(str(row[0])), str(row[1]))

    def alert_history(self, alert_id: str) -> list[triage.TriageEntry]:
        """The alert's triage history, oldest first."""
        if self._version < 2:
            return []
        rows = self._all(
            self._q(
                "SELECT alert_id, at, by_name, from_status, to_status, note FROM alert_triage"
                " WHERE alert_id = ? ORDER BY seq"
            ),
            (alert_id,),
            "reading triage history",
        )
        return [triage.TriageEntry(*(str(v) for v in r)) for r in rows]

    def triage_alerts(
        self, alert_ids: Sequence[str], status: str, *, by: str, note: str
    ) -> list[triage.TriageEntry]:
        """Set the alerts' status and append their history in one transaction; see `Store.triage_alerts`."""
        self._writable()
        ids = triage.check_triage(self.location, alert_ids, status, by, note)
        at = ecs_now()
        d = self.dialect
        with self._statements("triage") as tx:
            # Rows locked in id order (PostgreSQL; SQLite locks the file): a concurrent triage of
            # the same alerts waits, then records the status this one left as its `from`.
            # in_list and lock_rows: fixed fragments of the dialect
            select = "SELECT id, status FROM alerts WHERE id" + d.in_list + " ORDER BY id" + d.lock_rows  # noqa: S608
            rows = tx.query(select, (d.list_param(ids),))
            current = {str(r[0]): str(r[1]) for r in rows}
            missing = [i for i in ids if i not in current]
            if missing:
                raise triage.AlertNotFound(self.location, missing)
            entries = [triage.TriageEntry(i, at, by, current[i], status, note) for i in ids]
            tx.query("UPDATE alerts SET status = ? WHERE id" + d.in_list, (status, d.list_param(ids)))  # noqa: S608
            tx.many(
                "INSERT INTO alert_triage (alert_id, at, by_name, from_status, to_status, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(e.alert_id, e.at, e.by, e.from_status, e.to_status, e.note) for e in entries],
            )
        return entries

    # ---------------------------------------------------------------- registry

    def update_agents(self, updates: Sequence[AgentUpdate]) -> None:
        """See `Store.update_agents`: the rows `agent_params` makes, written by the backend."""
        self._writable()
        if updates:
            self._upsert_agents(agent_params(updates, ecs_now()))

    @abc.abstractmethod
    def _upsert_agents(self, params: list[dict[str, Any]]) -> None:
        """Insert or update registry rows (named parameters) in one transaction."""

    def agents(self) -> list[AgentRecord]:
        """The fleet registry ordered by agent id, with each agent's watermark."""
        return [
            AgentRecord(
                id=r[0],
                host=r[1],
                version=r[2],
                first_seen=r[3],
                last_seen=r[4],
                last_heartbeat=r[5],
                connected=bool(r[6]),
                backlog=int(r[7]),
                gaps=int(r[8]),
                lost=int(r[9]),
                config_version=r[10],
                watermark=int(r[11]),
                stopped=r[12] == "agent.stop",
                collector=r[13],
            )
            for r in self._all(_AGENTS.format(collector="a.collector" if self._version >= 4 else "''"), ())
        ]

    def claim_silent(self, seen_before: str, now: str) -> list[AgentRecord]:
        """See `Store.claim_silent`: one UPDATE, so collectors claiming at once never share an agent."""
        self._writable()
        with self._statements("claiming silent agents") as tx:
            rows = tx.query(presence.CLAIM_SILENT, (now, seen_before))
        return [AgentRecord(id=r[0], host=r[1], version=r[2], last_seen=r[3], collector=r[4]) for r in rows]

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
        """See `Store.renew_lease`."""
        self._writable()
        lease = (collector, listen, now, now, signing_key)
        with self._statements("renewing the collector lease") as tx:
            tx.query(presence.START_LEASE if start else presence.RENEW_LEASE, lease)
            return len(tx.query(presence.EXPIRE, (expired_before,)))

    def fleet_collectors(self) -> list[CollectorRecord]:
        """See `Store.fleet_collectors`."""
        if self._version < 5:
            return []
        return [CollectorRecord(*(str(v) for v in r)) for r in self._all(presence.COLLECTORS, ())]

    # ------------------------------------------------------------------ grants

    def add_grant(self, grant: GrantRecord) -> None:
        """See `Store.add_grant`."""
        self._writable()
        self._write(self._q(grant_sql.INSERT), grant_sql.row(grant), "recording a grant")

    def grants(self, *, host: str | None = None, active_at: str | None = None) -> list[GrantRecord]:
        """See `Store.grants`."""
        if self._version < 6:
            return []  # a read-only view of a store older than grants
        clauses: list[str] = []
        params: list[str] = []
        if host is not None:
            clauses.append("host = ?")
            params.append(host.lower())
        if active_at is not None:
            clauses.append("revoked_at = '' AND until > ?")
            params.append(active_at)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        select = grant_sql.SELECT if self._version >= 9 else grant_sql.SELECT_6  # schema 9 added revoked_by
        rows = self._all(self._q(select + where + grant_sql.ORDER), params)
        return [grant_sql.record(r) for r in rows]

    def revoke_grant(self, grant_id: str, at: str, by: str = "") -> GrantRecord | None:
        """See `Store.revoke_grant`."""
        self._writable()
        with self._statements("revoking a grant") as tx:
            rows = tx.query(grant_sql.REVOKE, (at, by, grant_id))
        return grant_sql.record(rows[0]) if rows else None


# An alert body as json for field filters. PostgreSQL refuses to read a JSON \u0000 escape, and one
# NUL an endpoint put in a user name would fail every filtered listing: such an escape (after
# escaped backslashes are respelt as \u005c, so a literal "\\u0000" is left alone) reads as U+FFFD.
_PG_ALERT_JSON = r"replace(replace(body, '\\', '\u005c'), '\u0000', '\ufffd')::json"

SQLITE = Dialect(
    placeholder="?",
    in_list=" IN (SELECT value FROM json_each(?))",
    list_param=lambda values: json.dumps(list(values)),
    alert_field=lambda field: f"""json_extract(body, '$."{field}"')""",
    status_v1=(
        "CASE WHEN json_extract(body, '$.status') IN ('resolved', 'false_positive', 'closed')"
        " THEN json_extract(body, '$.status') ELSE 'open' END"
    ),
    lock_rows="",
    select_alerts_v1=(
        "SELECT body, CASE WHEN json_extract(body, '$.status') IN ('resolved', 'false_positive', 'closed')"
        " THEN json_extract(body, '$.status') ELSE 'open' END FROM alerts"
    ),
)
POSTGRES = Dialect(
    placeholder="%s",
    in_list=" = ANY(?::text[])",
    list_param=list,
    alert_field=lambda field: f"({_PG_ALERT_JSON} ->> '{field}')",
    status_v1=(
        "CASE WHEN body::jsonb ->> 'status' IN ('resolved', 'false_positive', 'closed')"
        " THEN body::jsonb ->> 'status' ELSE 'open' END"
    ),
    lock_rows=" FOR UPDATE",
    select_alerts_v1=(
        "SELECT body, CASE WHEN body::jsonb ->> 'status' IN ('resolved', 'false_positive', 'closed')"
        " THEN body::jsonb ->> 'status' ELSE 'open' END FROM alerts"
    ),
)
