"""The reads the console's pages need, in the store's shared SQL (both stores, `?` placeholders).

    page = alert_page(store, AlertQuery(users=("alice",), statuses=("open",), page=2))
    events, more = timeline(store, Subject("user", "alice"), since, until)

Timelines read events by (user_name | host | device_serial, ts): `ensure_indexes` adds those
three indexes to the events table when a console is configured (ingest pays a little for them;
without a console nothing changes). Alert field filters read the alert's JSON body through the
store's dialect, as `exfilguard alerts` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector.store import triage
from collector.store.base import EventFilter, Mapping, Store, StoreError
from collector.store.rows import stored_mapping
from collector.store.sql import SqlStore
from protos import exfilguard_pb2 as pb

SEVERITIES = ("low", "medium", "high", "critical")
SORTS = ("time", "severity", "policy", "status", "user", "host")
PER_PAGE = 50
MAX_PAGE = 10_000
MAX_VALUES = 100  # values of one filter
SUBJECTS = {"user": "user_name", "host": "host", "device": "device_serial"}  # timeline kind -> column
_ALERT_FIELDS = {"user": "user.name", "host": "host.name", "device": "device.serial"}
_SEVERITY_RANK = (
    "CASE severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3"
    " WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END"
)
INDEXES = (
    *(
        f"CREATE INDEX IF NOT EXISTS events_{kind}_ts ON events ({column}, ts)"
        for kind, column in SUBJECTS.items()
    ),
    # the queue's policy choices (DISTINCT policy_id) from the index, not from every alert body
    "CREATE INDEX IF NOT EXISTS alerts_policy ON alerts (policy_id)",
)


def sql_store(store: Store) -> SqlStore:
    """The store as the shared SQL layer (both stores are); StoreError for anything else."""
    if not isinstance(store, SqlStore):
        raise StoreError(store.location, "the console needs a SQL store (SQLite or PostgreSQL)")
    return store


def alert_field_indexes(store: SqlStore) -> tuple[str, ...]:
    """Indexes on the alert fields the queue and the timelines filter on, in the dialect's own
    spelling of the field (a database uses an expression index only for the very same expression)."""
    return tuple(
        f"CREATE INDEX IF NOT EXISTS alerts_{kind}_ts ON alerts (({store.dialect.alert_field(field)}), ts)"
        for kind, field in _ALERT_FIELDS.items()
    )


def ensure_indexes(store: Store) -> None:
    """Create the console's indexes (idempotent; on a big store the first time takes a while)."""
    s = sql_store(store)
    with s.domain().transaction() as tx:
        for statement in (*INDEXES, *alert_field_indexes(s)):
            tx.query(statement)


@dataclass(frozen=True)
class AlertQuery:
    """What the alert queue shows: filters (empty: no filter), a time range, a sort and a page."""

    severities: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    since: str = ""  # ECS time, inclusive
    until: str = ""  # ECS time, exclusive
    sort: str = "time"
    descending: bool = True
    page: int = 1
    per_page: int = PER_PAGE


@dataclass(frozen=True)
class AlertPage:
    """One page of the queue: its alerts (each with `status`) and how many match in all."""

    alerts: list[Mapping]
    total: int
    query: AlertQuery

    @property
    def pages(self) -> int:
        """How many pages the matching alerts fill (at least 1)."""
        return max(1, -(-self.total // self.query.per_page))


def _alert_where(store: SqlStore, q: AlertQuery) -> tuple[str, list[Any]]:
    d = store.dialect
    clauses: list[str] = []
    params: list[Any] = []
    if q.since:
        clauses.append("ts >= ?")
        params.append(q.since)
    if q.until:
        clauses.append("ts < ?")
        params.append(q.until)
    fields: list[tuple[str, Sequence[str]]] = [
        ("status", triage.check_statuses(store.location, list(q.statuses)) or ()),
        ("severity", q.severities),
        ("policy_id", q.policies),
        (d.alert_field(_ALERT_FIELDS["user"]), q.users),
        (d.alert_field(_ALERT_FIELDS["host"]), q.hosts),
        (d.alert_field(_ALERT_FIELDS["device"]), q.devices),
    ]
    for column, values in fields:
        if len(values) == 1:
            # `=`, not "one of a list": the planner then walks (status, ts) in time order and stops
            # at the page's end, where a list makes it sort every open alert first.
            clauses.append(column + " = ?")  # column: the fixed list above
            params.append(values[0])
        elif values:
            clauses.append(column + d.in_list)
            params.append(d.list_param(list(values)[:MAX_VALUES]))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _order(store: SqlStore, q: AlertQuery) -> str:
    column = {
        "time": "ts",
        "severity": _SEVERITY_RANK,
        "policy": "policy_id",
        "status": "status",
        "user": store.dialect.alert_field(_ALERT_FIELDS["user"]),
        "host": store.dialect.alert_field(_ALERT_FIELDS["host"]),
    }.get(q.sort, "ts")
    way = " DESC" if q.descending else " ASC"
    if column == "ts":
        return f" ORDER BY ts{way}, id{way}"
    return f" ORDER BY {column}{way}, ts DESC, id DESC"


def alert_page(store: Store, q: AlertQuery) -> AlertPage:
    """One sorted page of the alerts matching the query, and the number that match."""
    s = sql_store(store)
    where, params = _alert_where(s, q)
    page = min(max(1, q.page), MAX_PAGE)
    with s.domain().transaction() as tx:
        (count,) = tx.query("SELECT COUNT(*) FROM alerts" + where, params)  # noqa: S608 (fixed fragments)
        rows = tx.query(
            "SELECT body, status FROM alerts" + where + _order(s, q) + " LIMIT ? OFFSET ?",  # noqa: S608
            [*params, q.per_page, (page - 1) * q.per_page],
        )
    alerts = [triage.with_status(json.loads(str(r[0])), str(r[1])) for r in rows]
    return AlertPage(alerts, int(count[0]), q)


def policies(store: Store) -> list[str]:
    """The policy ids of stored alerts (the queue's policy filter offers them)."""
    with sql_store(store).domain().transaction() as tx:
        return [
            str(r[0]) for r in tx.query("SELECT DISTINCT policy_id FROM alerts ORDER BY policy_id LIMIT 500")
        ]


# ---------------------------------------------------------------------- timelines


@dataclass(frozen=True)
class Subject:
    """Whose timeline: a user name, a host name or a device serial."""

    kind: str  # user | host | device
    name: str

    @property
    def column(self) -> str:
        """The events column that names it."""
        return SUBJECTS[self.kind]


@dataclass(frozen=True)
class Day:
    """What one subject wrote to removable media on one day (UTC)."""

    day: str  # YYYY-MM-DD
    files: int
    bytes: int


def timeline(
    store: Store, subject: Subject, since: str, until: str, *, page: int = 1, per_page: int = 100
) -> tuple[list[Mapping], bool]:
    """The subject's events in [since, until), newest first, one page; and whether more follow."""
    s = sql_store(store)
    page = min(max(1, page), MAX_PAGE)
    with s.domain().transaction() as tx:
        rows = tx.query(
            f"SELECT agent_id, sequence, data FROM events WHERE {subject.column} = ? AND ts >= ? AND ts < ?"  # noqa: S608
            " ORDER BY ts DESC, agent_id, sequence LIMIT ? OFFSET ?",
            (subject.name, since, until, per_page + 1, (page - 1) * per_page),
        )
    events = [stored_mapping(s.location, str(a), int(q), bytes(d)) for a, q, d in rows[:per_page]]
    return events, len(rows) > per_page


def removable_days(store: Store, subject: Subject, since: str, until: str) -> list[Day]:
    """Files and bytes the subject wrote to removable media per day in [since, until), oldest first."""
    s = sql_store(store)
    with s.domain().transaction() as tx:
        rows = tx.query(
            f"SELECT substr(ts, 1, 10), data FROM events WHERE {subject.column} = ? AND ts >= ? AND ts < ?"  # noqa: S608
            " AND action = 'file.write' AND device_serial <> ''",
            (subject.name, since, until),
        )
    days: dict[str, list[int]] = {}
    for day, data in rows:
        # Only the size is needed: a protobuf parse, not the whole ECS mapping.
        size = pb.Event.FromString(bytes(data)).file.size
        totals = days.setdefault(str(day), [0, 0])
        totals[0] += 1
        totals[1] += size
    return [Day(day, files, size) for day, (files, size) in sorted(days.items())]


def subject_alerts(store: Store, subject: Subject, since: str, until: str, limit: int = 500) -> list[Mapping]:
    """The subject's alerts in [since, until), oldest first."""
    named = (subject.name,)
    query = AlertQuery(
        since=since,
        until=until,
        per_page=limit,
        users=named if subject.kind == "user" else (),
        hosts=named if subject.kind == "host" else (),
        devices=named if subject.kind == "device" else (),
    )
    return list(reversed(alert_page(store, query).alerts))


def evidence_events(store: Store, alert: Mapping) -> tuple[list[Mapping], list[str]]:
    """The stored events the alert cites, in (agent, sequence) order, and the ids no longer stored.

    The firing agent's events are looked up first (its key range only); only ids not found
    there, e.g. of an aggregate over several hosts, need a scan of the other agents' events.
    """
    cited = alert.get("evidence")
    wanted = [str(e) for e in cited] if isinstance(cited, list) else []
    found: dict[str, Mapping] = {}
    agent = str(alert.get("agent.id") or "")
    if wanted and agent:
        for event in store.events(EventFilter(agent=agent, event_ids=tuple(wanted))):
            found[str(event.get("event.id"))] = event
    rest = tuple(e for e in wanted if e not in found)
    if rest:
        for event in store.events(EventFilter(event_ids=rest)):
            found[str(event.get("event.id"))] = event
    events = sorted(found.values(), key=lambda m: (str(m.get("agent.id")), int(m.get("event.sequence", 0))))
    return events, [e for e in wanted if e not in found]


def events_by_key(store: Store, refs: Sequence[tuple[str, int, str]]) -> list[Mapping]:
    """Stored events named by (agent id, sequence, event id), in the order given (those gone left out)."""
    by_agent: dict[str, list[str]] = {}
    for agent_id, _, event_id in refs:
        by_agent.setdefault(agent_id, []).append(event_id)
    found: dict[str, Mapping] = {}
    for agent_id, ids in by_agent.items():
        for event in store.events(EventFilter(agent=agent_id, event_ids=tuple(ids))):
            found[str(event.get("event.id"))] = event
    return [found[e] for _, _, e in refs if e in found]


ASSIGNED = "assigned to "  # how an assignment's triage note begins (alertpages.py writes it)


def assignees(store: Store, alert_ids: Sequence[str]) -> dict[str, str]:
    """Who each of these alerts was last assigned to (alerts never assigned left out)."""
    if not alert_ids:
        return {}
    s = sql_store(store)
    d = s.dialect
    with s.domain().transaction() as tx:
        select = "SELECT alert_id, note FROM alert_triage WHERE alert_id" + d.in_list  # noqa: S608 (fixed)
        rows = tx.query(
            select + " AND note LIKE ? ORDER BY seq", (d.list_param(list(alert_ids)), ASSIGNED + "%")
        )
    return {str(a): str(n)[len(ASSIGNED) :].split(":", 1)[0] for a, n in rows}
