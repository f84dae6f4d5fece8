"""The embedded default store: one SQLite file in WAL mode.

Events are keyed by (agent id, sequence), so a resent batch is skipped, never stored
twice. Each row keeps the serialized protobuf (the full event), the columns exports filter
on, and its link in the agent's hash chain (protos/chain.py).

Two prefixes per agent, both in the `chains` table:
  - `stored`: the highest sequence up to which every event is stored; what the collector
    acknowledges. Events above a hole are stored but do not move it until the hole fills.
  - `watermark` / `head`: how far the hash chain has been computed, and its last value.
    Sealing (`seal`) chains stored events in sequence order, only inside the `stored` prefix.

Sealing costs ~30-60 us of Python per event (ECS mapping, canonical JSON, two SHA-256),
several times the rest of ingest. `ingest_batches(..., seal=True)` (the default, and
`ingest`) chains in the same transaction. The collector passes seal=False and runs
`collector.sealer` in a process of its own, so acks never wait for hashing and the hashing
uses the second core; the chain then trails the acks by moments under load. Sealing is a
compare-and-set on `watermark`, so two sealers can never write different values.

Durability: `synchronous=FULL`. An acknowledged batch lets the agent delete it from its
spool, so a commit must survive power loss, not only a crash. The server groups several
agents' batches into one transaction (`ingest_batches`), so the fsync is paid per group.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from collector.store import domain, triage
from collector.store.base import (
    AgentRecord,
    AgentUpdate,
    EventFilter,
    IngestResult,
    Mapping,
    Store,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
)
from collector.store.rows import stored_mapping
from common.ecstime import ecs_now, ecs_time
from protos import chain
from protos import exfilguard_pb2 as pb

SCHEMA_VERSION = 2  # 2: alert triage (alerts.status, alert_triage)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    agent_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    action TEXT NOT NULL,
    host TEXT NOT NULL,
    user_name TEXT NOT NULL,
    device_serial TEXT NOT NULL,
    chain BLOB,
    data BLOB NOT NULL,
    PRIMARY KEY (agent_id, sequence)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS chains (
    agent_id TEXT PRIMARY KEY,
    stored INTEGER NOT NULL DEFAULT 0,
    max_sequence INTEGER NOT NULL DEFAULT 0,
    watermark INTEGER NOT NULL DEFAULT 0,
    head BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    first_seen TEXT NOT NULL DEFAULT '',
    last_seen TEXT NOT NULL DEFAULT '',
    last_heartbeat TEXT NOT NULL DEFAULT '',
    connected INTEGER NOT NULL DEFAULT 0,
    backlog INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    config_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
"""

# Version 1 -> 2: the alert's triage status (a column, so filters and retention use an index)
# and its append-only history. Statuses a body already carried (retention honoured them) stay.
_TRIAGE_SCHEMA = (
    "ALTER TABLE alerts ADD COLUMN status TEXT NOT NULL DEFAULT 'open'",
    "CREATE INDEX alerts_status ON alerts (status, ts)",
    "CREATE TABLE alert_triage (seq INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL,"
    " at TEXT NOT NULL, by_name TEXT NOT NULL, from_status TEXT NOT NULL, to_status TEXT NOT NULL,"
    " note TEXT NOT NULL)",
    "CREATE INDEX alert_triage_alert ON alert_triage (alert_id, seq)",
    "CREATE TRIGGER alert_triage_no_update BEFORE UPDATE ON alert_triage"
    " BEGIN SELECT RAISE(ABORT, 'alert_triage is append-only'); END",
    "CREATE TRIGGER alert_triage_no_delete BEFORE DELETE ON alert_triage"
    " BEGIN SELECT RAISE(ABORT, 'alert_triage is append-only'); END",
)
_IN_JSON_LIST = " IN (SELECT value FROM json_each(?))"
_SELECT_ALERTS = "SELECT body, status FROM alerts"
# Reading a store not upgraded yet (read-only): statuses the bodies carried, as retention read them.
_STATUS_V1 = (
    "CASE WHEN json_extract(body, '$.status') IN ('resolved', 'false_positive', 'closed')"
    " THEN json_extract(body, '$.status') ELSE 'open' END"
)
_SELECT_ALERTS_V1 = (
    "SELECT body, CASE WHEN json_extract(body, '$.status') IN ('resolved', 'false_positive', 'closed')"
    " THEN json_extract(body, '$.status') ELSE 'open' END FROM alerts"
)
_LEGACY_STATUS = (
    "UPDATE alerts SET status = json_extract(body, '$.status')"
    " WHERE json_extract(body, '$.status') IN (SELECT value FROM json_each(?))"
)

# Column order of an events row (the benchmark baseline inserts the same tuples).
INSERT_EVENT = (
    "INSERT INTO events (agent_id, sequence, event_id, ts, action, host, user_name, device_serial,"
    " chain, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_UPSERT_AGENT = """
INSERT INTO agents (id, host, version, first_seen, last_seen, last_heartbeat, connected, backlog,
                    config_version)
VALUES (:id, COALESCE(:host, ''), COALESCE(:version, ''), :first_seen, COALESCE(:seen, ''),
        COALESCE(:heartbeat, ''), COALESCE(:connected, 0), COALESCE(:backlog, 0),
        COALESCE(:config_version, ''))
ON CONFLICT (id) DO UPDATE SET
    host = COALESCE(:host, host),
    version = COALESCE(:version, version),
    last_seen = COALESCE(:seen, last_seen),
    last_heartbeat = COALESCE(:heartbeat, last_heartbeat),
    connected = COALESCE(:connected, connected),
    backlog = COALESCE(:backlog, backlog),
    config_version = COALESCE(:config_version, config_version)
"""

_ADD_GAPS = """
INSERT INTO agents (id, first_seen, gaps, lost) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET gaps = gaps + excluded.gaps, lost = lost + excluded.lost
"""

_STREAM_CHUNK = 500

# Measured with bench/ingest.py's rows (~450 bytes, several agents interleaved): a rowid table
# (rows appended in arrival order, the (agent, sequence) key in a small separate index),
# 8 KiB pages and a 32 MiB page cache need about 40% less CPU per insert than a WITHOUT ROWID
# table with SQLite's defaults, where interleaved agents split big-row pages all the time.
PAGE_SIZE = 8192
CACHE_KIB = 32 * 1024


def tune(db: sqlite3.Connection) -> None:
    """The pragmas of a writing connection: WAL, fsync on commit, a page cache for the indexes."""
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")


def _now() -> str:
    return ecs_now()


@dataclass
class _Prefix:
    """An agent's stored state: end of the contiguous stored prefix, highest stored sequence."""

    stored: int
    max_sequence: int


_TS_HEADS: dict[int, str] = {}


def _ecs_timestamp(event: pb.Event) -> str:
    """`@timestamp` as protos.events.to_mapping writes it, with the seconds part cached.

    Unlike to_mapping it never refuses a timestamp: the store keeps what ingest accepted
    (stores written before ingest checked timestamps hold such rows too).
    """
    if not event.HasField("timestamp"):
        return ""
    ts = event.timestamp
    head = _TS_HEADS.get(ts.seconds)
    if head is None:
        if len(_TS_HEADS) >= 4096:
            _TS_HEADS.clear()
        moment = dt.datetime.fromtimestamp(ts.seconds, tz=dt.UTC)
        head = _TS_HEADS[ts.seconds] = moment.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{head}{ts.nanos // 1000:06d}Z"


def event_row(agent_id: str, event: pb.Event) -> tuple[Any, ...]:
    """The events-table row of one event (column order of INSERT_EVENT), chain not yet computed.

    Columns come straight from the protobuf: building the full ECS mapping here would cost
    more than everything else ingest does.
    """
    info = event.event  # each attribute step builds a wrapper object: take it once
    return (
        agent_id,
        info.sequence,
        info.id,
        _ecs_timestamp(event),
        info.action,
        event.host.name,
        event.user.name,
        event.device.serial,
        None,
        event.SerializeToString(),
    )


class SqliteStore(Store):
    """SQLite (WAL) implementation of `Store`; safe to call from several threads (one lock)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.location = str(path)
        self._path = Path(path)
        self._readonly = readonly
        self._lock = threading.Lock()
        self._domain: domain.DomainSql | None = None
        self._prefixes: dict[str, _Prefix] = {}
        self._version = SCHEMA_VERSION
        self._db = self._connect()
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreCorrupt(self.location, f"not a usable ExfilGuard store: {exc}") from exc

    # ------------------------------------------------------------------ set-up

    def _connect(self) -> sqlite3.Connection:
        try:
            if self._readonly:
                if not self._path.exists():
                    raise StoreUnavailable(self.location, "no such store (has the collector run yet?)")
                uri = f"file:{quote(str(self._path.resolve()))}?mode=ro"
                return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(self.location, f"cannot open: {exc}") from exc

    def _prepare(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                self.location, f"schema version {version} is newer than this collector's ({SCHEMA_VERSION})"
            )
        self._version = version
        if self._readonly:
            if version == 0:
                raise StoreCorrupt(self.location, "not an ExfilGuard store (no schema)")
            return  # an older schema is read as it is (alerts without triage read as open)
        if version == 0:
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect before the first table
        tune(db)
        if version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._upgrade()
            except BaseException:
                self._rollback()
                raise
            db.execute("COMMIT")
            self._version = SCHEMA_VERSION

    def _upgrade(self) -> None:
        """Create or upgrade the schema inside the caller's write transaction."""
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])  # another process may have won
        if version == 0:
            # Statement by statement: executescript() would commit the open transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        if version < 2:
            for statement in _TRIAGE_SCHEMA:
                db.execute(statement)
            db.execute(_LEGACY_STATUS, (json.dumps(triage.CLOSED_STATUSES),))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ events

    def _prefix(self, agent_id: str) -> _Prefix:
        state = self._prefixes.get(agent_id)
        if state is None:
            row = self._db.execute(
                "SELECT stored, max_sequence FROM chains WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            state = _Prefix(0, 0) if row is None else _Prefix(int(row[0]), int(row[1]))
            self._prefixes[agent_id] = state
        return state

    def ingest_batches(
        self, batches: Sequence[tuple[str, Sequence[pb.Event]]], *, seal: bool = True
    ) -> list[IngestResult]:
        """Store batches of several agents in one transaction; see `Store.ingest_batches`."""
        self._writable()
        with self._lock:
            staged: dict[str, _Prefix] = {}
            results: list[IngestResult] = []
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                for agent_id, batch in batches:
                    state = staged.get(agent_id)
                    if state is None:
                        base = self._prefix(agent_id)
                        state = _Prefix(base.stored, base.max_sequence)
                    results.append(self._ingest_one(agent_id, batch, state))
                    staged[agent_id] = state
                db.executemany(
                    "INSERT INTO chains (agent_id, stored, max_sequence, watermark, head)"
                    " VALUES (?, ?, ?, 0, ?) ON CONFLICT (agent_id) DO UPDATE SET stored = excluded.stored,"
                    " max_sequence = excluded.max_sequence",
                    [(a, s.stored, s.max_sequence, chain.GENESIS) for a, s in staged.items()],
                )
                if seal:
                    for agent_id in staged:
                        self._seal_agent(agent_id, None)
                db.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as exc:  # OverflowError: a sequence beyond int64
                self._rollback()
                raise StoreError(self.location, f"ingest failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            # Only a committed transaction moves the cached state.
            self._prefixes.update(staged)
            return results

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _ingest_one(self, agent_id: str, batch: Sequence[pb.Event], state: _Prefix) -> IngestResult:
        db = self._db
        fresh: dict[int, pb.Event] = {}
        for event in batch:
            seq = event.event.sequence
            if seq > state.stored:
                fresh[seq] = event
        if not fresh:
            return IngestResult(agent_id, state.stored, [])
        order = sorted(fresh)
        if state.max_sequence > state.stored:
            # Holes exist: some of these may already be stored above the hole.
            present = {
                int(r[0])
                for r in db.execute(
                    "SELECT sequence FROM events WHERE agent_id = ? AND sequence BETWEEN ? AND ?",
                    (agent_id, order[0], order[-1]),
                )
            }
            order = [s for s in order if s not in present]
            if not order:
                return IngestResult(agent_id, state.stored, [])
        new = [fresh[s] for s in order]
        db.executemany(INSERT_EVENT, [event_row(agent_id, e) for e in new])
        gaps = [e.exfilguard.gap.lost for e in new if e.event.action == "agent.gap"]
        if gaps:
            db.execute(_ADD_GAPS, (agent_id, _now(), len(gaps), sum(gaps)))
        contiguous = order[0] == state.stored + 1 and order[-1] - order[0] + 1 == len(order)
        state.max_sequence = max(state.max_sequence, order[-1])
        if contiguous and state.max_sequence == order[-1]:
            state.stored = order[-1]  # the common case: the batch extends the prefix, no holes
        elif state.max_sequence > state.stored:
            state.stored = self._contiguous_end(agent_id, state.stored)
        return IngestResult(agent_id, state.stored, new)

    def _contiguous_end(self, agent_id: str, stored: int) -> int:
        """Walk up from `stored` while the next sequence is present (a hole just filled)."""
        cursor = self._db.execute(
            "SELECT sequence FROM events WHERE agent_id = ? AND sequence > ? ORDER BY sequence",
            (agent_id, stored),
        )
        for (seq,) in cursor:
            if seq != stored + 1:
                break
            stored = seq
        cursor.close()
        return stored

    # ------------------------------------------------------------------- chain

    def seal(self, limit: int | None = None) -> int:
        """Chain stored, not yet chained events (at most about `limit`); returns how many were chained.

        The hashing runs outside any write transaction (WAL readers do not block the ingest
        writer); the result is committed only if nobody moved the chain meanwhile.
        """
        self._writable()
        with self._lock:
            try:
                behind = self._db.execute("SELECT agent_id FROM chains WHERE watermark < stored")
                agents = [str(r[0]) for r in behind]
                done = 0
                for agent_id in agents:
                    if limit is not None and done >= limit:
                        break
                    work = self._chain_work(agent_id, None if limit is None else limit - done)
                    if work is None:
                        continue
                    self._db.execute("BEGIN IMMEDIATE")
                    if self._apply_chain(agent_id, *work):
                        self._db.execute("COMMIT")
                        done += len(work[3])
                    else:
                        self._db.execute("ROLLBACK")
                return done
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(self.location, f"sealing failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _seal_agent(self, agent_id: str, limit: int | None) -> int:
        """Chain one agent's unchained prefix inside the caller's write transaction."""
        work = self._chain_work(agent_id, limit)
        if work is None:
            return 0
        self._apply_chain(agent_id, *work)
        return len(work[3])

    def _chain_work(
        self, agent_id: str, limit: int | None
    ) -> tuple[int, int, bytes, list[tuple[bytes, str, int]]] | None:
        """(chained before, chained after, new head, event updates) for one agent, or None if nothing."""
        db = self._db
        sql = "SELECT watermark, head, stored FROM chains WHERE agent_id = ?"
        row = db.execute(sql, (agent_id,)).fetchone()
        if row is None:
            return None
        before, head, stored = int(row[0]), bytes(row[1]), int(row[2])
        upto = stored if limit is None else min(stored, before + limit)
        if upto <= before:
            return None
        link, location = chain.link, self.location
        watermark = before
        updates: list[tuple[bytes, str, int]] = []
        cursor = db.execute(
            "SELECT sequence, data FROM events WHERE agent_id = ? AND sequence > ? AND sequence <= ?"
            " ORDER BY sequence",
            (agent_id, before, upto),
        )
        for seq, data in cursor:
            if seq != watermark + 1:
                break  # cannot happen inside the stored prefix; stop rather than chain across a hole
            head = link(head, stored_mapping(location, agent_id, seq, data))
            watermark = seq
            updates.append((head, agent_id, seq))
        cursor.close()
        return (before, watermark, head, updates) if updates else None

    def _apply_chain(
        self, agent_id: str, before: int, after: int, head: bytes, updates: list[tuple[bytes, str, int]]
    ) -> bool:
        """Write chain values if the agent's chain still ends at `before` (compare-and-set)."""
        moved = self._db.execute(
            "UPDATE chains SET watermark = ?, head = ? WHERE agent_id = ? AND watermark = ?",
            (after, head, agent_id, before),
        )
        if moved.rowcount != 1:
            return False
        self._db.executemany("UPDATE events SET chain = ? WHERE agent_id = ? AND sequence = ?", updates)
        return True

    def watermark(self, agent_id: str) -> int:
        """Highest contiguous sequence stored for the agent (0 when none): what the collector acks."""
        with self._lock:
            if self._readonly:
                row = self._db.execute("SELECT stored FROM chains WHERE agent_id = ?", (agent_id,)).fetchone()
                return 0 if row is None else int(row[0])
            return self._prefix(agent_id).stored

    def unsealed(self) -> int:
        """Events in the agents' stored prefixes not chained yet (one row per agent is read)."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(stored - watermark), 0) FROM chains").fetchone()
            return int(row[0])

    def chain_head(self, agent_id: str) -> tuple[int, bytes]:
        """(last chained sequence, its chain value) of one agent; (0, genesis) before any."""
        with self._lock:
            sql = "SELECT watermark, head FROM chains WHERE agent_id = ?"
            row = self._db.execute(sql, (agent_id,)).fetchone()
            return (0, chain.GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def count_events(self, agent_id: str | None = None) -> int:
        """How many events are stored (for one agent, or all)."""
        with self._lock:
            if agent_id is None:
                row = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            else:
                sql = "SELECT COUNT(*) FROM events WHERE agent_id = ?"
                row = self._db.execute(sql, (agent_id,)).fetchone()
            return int(row[0])

    def events(self, where: EventFilter | None = None) -> Iterator[Mapping]:
        """Stream stored events as mappings in (agent, sequence) order; see `Store.events`."""
        where = where or EventFilter()
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("ts", ">=", ecs_time(where.since) if where.since else None),
            ("ts", "<", ecs_time(where.until) if where.until else None),
            ("host", "=", where.host),
            ("user_name", "=", where.user),
            ("agent_id", "=", where.agent),
            ("action", "=", where.action),
            ("device_serial", "=", where.device_serial),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")  # column and op come from the fixed table above
                params.append(value)
        if where.event_ids is not None:
            clauses.append("event_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(where.event_ids)))
        sql = "SELECT chain, data, agent_id, sequence FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY agent_id, sequence"
        return self._stream(sql, params)

    def _stream(self, sql: str, params: list[Any]) -> Iterator[Mapping]:
        # A connection of its own: a long export reads one consistent WAL snapshot and never
        # holds the writer's lock.
        uri = f"file:{quote(str(self._path.resolve()))}?mode=ro"
        try:
            reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(self.location, f"cannot open for reading: {exc}") from exc
        try:
            reader.execute("PRAGMA busy_timeout = 10000")
            reader.execute("BEGIN")
            cursor = reader.execute(sql, params)
            while True:
                rows = cursor.fetchmany(_STREAM_CHUNK)
                if not rows:
                    break
                for link, data, agent_id, sequence in rows:
                    mapping = stored_mapping(self.location, agent_id, sequence, data)
                    if link is not None:
                        mapping["exfilguard.chain.hash"] = bytes(link).hex()
                    yield mapping
        except sqlite3.Error as exc:
            raise StoreError(self.location, f"reading events failed: {exc}") from exc
        finally:
            reader.close()

    # ------------------------------------------------------------------ alerts

    def add_alert(self, alert: Mapping) -> None:
        """Store (or replace, by id) an alert; see `Store.add_alert`."""
        self._writable()
        try:
            row = (
                str(alert["id"]),
                str(alert["@timestamp"]),
                str(alert["policy.id"]),
                str(alert.get("severity", "")),
                json.dumps(alert, sort_keys=True, default=str),
            )
        except KeyError as exc:
            raise StoreError(self.location, f"alert lacks required field {exc}") from exc
        with self._lock:
            # An upsert, not INSERT OR REPLACE: replacing the row would reset its triage status.
            self._execute(
                "INSERT INTO alerts (id, ts, policy_id, severity, body) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET ts = excluded.ts, policy_id = excluded.policy_id,"
                " severity = excluded.severity, body = excluded.body",
                row,
            )

    def _select_alerts(self) -> str:
        # Columns: body, status. A read-only view of a store not upgraded yet reads the bodies.
        return _SELECT_ALERTS if self._version >= 2 else _SELECT_ALERTS_V1

    def _status_column(self) -> str:
        return "status" if self._version >= 2 else _STATUS_V1

    def alerts(
        self,
        limit: int = 100,
        since: str | None = None,
        *,
        statuses: Sequence[str] | None = None,
        severities: Sequence[str] | None = None,
        policies: Sequence[str] | None = None,
        hosts: Sequence[str] | None = None,
        users: Sequence[str] | None = None,
        devices: Sequence[str] | None = None,
    ) -> list[Mapping]:
        """The newest `limit` alerts at or after `since` and matching the filters, oldest first."""
        status = self._status_column()
        sql = self._select_alerts() + " WHERE ts >= ?"
        params: list[Any] = [since or ""]
        for column, values in (
            (status, triage.check_statuses(self.location, statuses)),
            ("severity", severities),
            ("policy_id", policies),
            ("""json_extract(body, '$."host.name"')""", hosts),
            ("""json_extract(body, '$."user.name"')""", users),
            ("""json_extract(body, '$."device.serial"')""", devices),
        ):
            if values is not None:
                sql += " AND " + column + _IN_JSON_LIST  # column: from the fixed table above
                params.append(json.dumps(list(values)))
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        params.append(max(0, limit))
        with self._lock:
            try:
                rows = self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(self.location, f"reading alerts failed: {exc}") from exc
        return [triage.with_status(json.loads(r[0]), str(r[1])) for r in reversed(rows)]

    def alert(self, alert_id: str) -> Mapping | None:
        """One alert with its current status, or None."""
        sql = self._select_alerts() + " WHERE id = ?"
        row = self._read_one(sql, (alert_id,), "reading an alert")
        return None if row is None else triage.with_status(json.loads(row[0]), str(row[1]))

    def alert_history(self, alert_id: str) -> list[triage.TriageEntry]:
        """The alert's triage history, oldest first."""
        if self._version < 2:
            return []
        sql = (
            "SELECT alert_id, at, by_name, from_status, to_status, note FROM alert_triage"
            " WHERE alert_id = ? ORDER BY seq"
        )
        with self._lock:
            try:
                rows = self._db.execute(sql, (alert_id,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(self.location, f"reading triage history failed: {exc}") from exc
        return [triage.TriageEntry(*(str(v) for v in r)) for r in rows]

    def _read_one(self, sql: str, params: Sequence[Any], what: str) -> Any:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(self.location, f"{what} failed: {exc}") from exc

    def triage_alerts(
        self, alert_ids: Sequence[str], status: str, *, by: str, note: str
    ) -> list[triage.TriageEntry]:
        """Set the alerts' status and append their history in one transaction; see `Store.triage_alerts`."""
        self._writable()
        ids = triage.check_triage(self.location, alert_ids, status, by, note)
        at = _now()
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                current = {
                    str(r[0]): str(r[1])
                    for r in db.execute(
                        "SELECT id, status FROM alerts WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps(ids),),
                    )
                }
                missing = [i for i in ids if i not in current]
                if missing:
                    raise triage.AlertNotFound(self.location, missing)
                entries = [triage.TriageEntry(i, at, by, current[i], status, note) for i in ids]
                db.execute(
                    "UPDATE alerts SET status = ? WHERE id IN (SELECT value FROM json_each(?))",
                    (status, json.dumps(ids)),
                )
                db.executemany(
                    "INSERT INTO alert_triage (alert_id, at, by_name, from_status, to_status, note)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.alert_id, e.at, e.by, e.from_status, e.to_status, e.note) for e in entries],
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(self.location, f"triage failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
        return entries

    # ---------------------------------------------------------------- registry

    def update_agents(self, updates: Sequence[AgentUpdate]) -> None:
        """Create or update registry entries in one transaction."""
        self._writable()
        if not updates:
            return
        now = _now()
        params = [
            {
                "id": u.id,
                "host": u.host,
                "version": u.version,
                "first_seen": u.seen or now,
                "seen": u.seen,
                "heartbeat": u.heartbeat,
                "connected": None if u.connected is None else int(u.connected),
                "backlog": u.backlog,
                "config_version": u.config_version,
            }
            for u in updates
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(_UPSERT_AGENT, params)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(self.location, f"registry update failed: {exc}") from exc

    def agents(self) -> list[AgentRecord]:
        """The fleet registry ordered by agent id, with each agent's watermark."""
        with self._lock:
            rows = self._db.execute(
                "SELECT a.id, a.host, a.version, a.first_seen, a.last_seen, a.last_heartbeat, a.connected,"
                " a.backlog, a.gaps, a.lost, a.config_version, COALESCE(c.stored, 0),"
                " (SELECT e.action FROM events e WHERE e.agent_id = a.id ORDER BY e.sequence DESC LIMIT 1)"
                " FROM agents a LEFT JOIN chains c ON c.agent_id = a.id ORDER BY a.id"
            ).fetchall()
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
            )
            for r in rows
        ]

    def mark_all_disconnected(self) -> None:
        """Clear every connected flag."""
        self._writable()
        with self._lock:
            self._execute("UPDATE agents SET connected = 0 WHERE connected != 0", ())

    # ------------------------------------------------------------------ misc

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(self.location, f"write failed: {exc}") from exc

    def _writable(self) -> None:
        if self._readonly:
            raise StoreError(self.location, "store was opened read-only")

    def domain(self) -> domain.DomainSql:
        """The device and baseline tables' view of this connection (collector/store/domain.py)."""
        if self._domain is None:
            self._domain = domain.SqliteDomain(self._lock, lambda: self._db, self.location, self._readonly)
        return self._domain

    def close(self) -> None:
        """Close the database (every write is already committed)."""
        with self._lock:
            self._db.close()
