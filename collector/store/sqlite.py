"""The embedded default store: one SQLite file in WAL mode.

Events are keyed by (agent id, sequence), so a resent batch is skipped, never stored
twice. Each row keeps the serialized protobuf (the full event) plus the columns exports
filter on, and its link in the agent's hash chain (collector/evidence/chain.py).

Chain and holes: the chain runs in sequence order, so only the contiguous prefix of an
agent's sequences is chained. An event stored above a hole (its predecessor not yet
received) gets a NULL chain value; when the hole fills, the same transaction chains
every event the filled hole made contiguous. The prefix end is the agent's watermark,
the sequence the collector acknowledges.

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

from collector.evidence import chain
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
from protos import events as protos_events
from protos import exfilguard_pb2 as pb

SCHEMA_VERSION = 1

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
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS chains (
    agent_id TEXT PRIMARY KEY,
    watermark INTEGER NOT NULL,
    head BLOB NOT NULL,
    max_sequence INTEGER NOT NULL
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


def ecs_time(moment: dt.datetime) -> str:
    """ECS time string of a datetime (naive means UTC), as stored in the time columns."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return ecs_time(dt.datetime.now(dt.UTC))


@dataclass
class _Chain:
    """An agent's chain state: contiguous prefix end, its chain value, highest stored sequence."""

    watermark: int
    head: bytes
    max_sequence: int


def event_row(
    agent_id: str, sequence: int, mapping: Mapping, link: bytes | None, data: bytes
) -> tuple[Any, ...]:
    """The events-table row of one event (column order of INSERT_EVENT)."""
    return (
        agent_id,
        sequence,
        mapping.get("event.id", ""),
        mapping.get("@timestamp", ""),
        mapping.get("event.action", ""),
        mapping.get("host.name", ""),
        mapping.get("user.name", ""),
        mapping.get("device.serial", ""),
        link,
        data,
    )


class SqliteStore(Store):
    """SQLite (WAL) implementation of `Store`; safe to call from several threads (one lock)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.location = str(path)
        self._path = Path(path)
        self._readonly = readonly
        self._lock = threading.Lock()
        self._chains: dict[str, _Chain] = {}
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
        if self._readonly:
            if version == 0:
                raise StoreCorrupt(self.location, "not an ExfilGuard store (no schema)")
            return
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        if version == 0:
            db.execute("BEGIN IMMEDIATE")
            # Statement by statement: executescript() would commit the open transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")

    # ------------------------------------------------------------------ events

    def _chain_state(self, agent_id: str) -> _Chain:
        state = self._chains.get(agent_id)
        if state is None:
            row = self._db.execute(
                "SELECT watermark, head, max_sequence FROM chains WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                state = _Chain(0, chain.GENESIS, 0)
            else:
                state = _Chain(int(row[0]), bytes(row[1]), int(row[2]))
            self._chains[agent_id] = state
        return state

    def ingest_batches(self, batches: Sequence[tuple[str, Sequence[pb.Event]]]) -> list[IngestResult]:
        """Store batches of several agents in one transaction; see `Store.ingest_batches`."""
        self._writable()
        with self._lock:
            staged: dict[str, _Chain] = {}
            results: list[IngestResult] = []
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                for agent_id, batch in batches:
                    state = staged.get(agent_id)
                    if state is None:
                        base = self._chain_state(agent_id)
                        state = _Chain(base.watermark, base.head, base.max_sequence)
                    results.append(self._ingest_one(agent_id, batch, state))
                    staged[agent_id] = state
                db.executemany(
                    "INSERT OR REPLACE INTO chains (agent_id, watermark, head, max_sequence)"
                    " VALUES (?, ?, ?, ?)",
                    [(a, s.watermark, s.head, s.max_sequence) for a, s in staged.items()],
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(self.location, f"ingest failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            # Only a committed transaction moves the cached chain state.
            self._chains.update(staged)
            return results

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _ingest_one(self, agent_id: str, batch: Sequence[pb.Event], state: _Chain) -> IngestResult:
        db = self._db
        fresh: dict[int, pb.Event] = {}
        for event in batch:
            seq = event.event.sequence
            if seq > state.watermark:
                fresh[seq] = event
        if not fresh:
            return IngestResult(agent_id, state.watermark, [])
        order = sorted(fresh)
        if state.max_sequence > state.watermark:
            # Holes exist: some of these may already be stored above the hole.
            stored = {
                int(r[0])
                for r in db.execute(
                    "SELECT sequence FROM events WHERE agent_id = ? AND sequence BETWEEN ? AND ?",
                    (agent_id, order[0], order[-1]),
                )
            }
            order = [s for s in order if s not in stored]
            if not order:
                return IngestResult(agent_id, state.watermark, [])
        to_mapping = protos_events.to_mapping
        link = chain.link
        rows: list[tuple[Any, ...]] = []
        mappings: list[Mapping] = []
        gaps = lost = 0
        watermark, head = state.watermark, state.head
        for seq in order:
            event = fresh[seq]
            mapping = to_mapping(event)
            value: bytes | None = None
            if seq == watermark + 1:
                head = value = link(head, mapping)
                watermark = seq
            if mapping.get("event.action") == "agent.gap":
                gaps += 1
                lost += int(mapping.get("exfilguard.gap.lost", 0))
            rows.append(event_row(agent_id, seq, mapping, value, event.SerializeToString()))
            mappings.append(mapping)
        db.executemany(INSERT_EVENT, rows)
        state.max_sequence = max(state.max_sequence, order[-1])
        if state.max_sequence > watermark:
            watermark, head = self._chain_forward(agent_id, watermark, head, state.max_sequence)
        state.watermark, state.head = watermark, head
        if gaps:
            db.execute(_ADD_GAPS, (agent_id, _now(), gaps, lost))
        return IngestResult(agent_id, watermark, mappings)

    def _chain_forward(self, agent_id: str, watermark: int, head: bytes, upto: int) -> tuple[int, bytes]:
        """Chain events stored above a hole that the hole's filling made contiguous."""
        updates: list[tuple[bytes, str, int]] = []
        cursor = self._db.execute(
            "SELECT sequence, chain, data FROM events WHERE agent_id = ? AND sequence > ? AND sequence <= ?"
            " ORDER BY sequence",
            (agent_id, watermark, upto),
        )
        for seq, existing, data in cursor:
            if seq != watermark + 1:
                break
            if existing is not None:  # chained in this same batch
                head, watermark = bytes(existing), seq
                continue
            head = chain.link(head, protos_events.to_mapping(pb.Event.FromString(data)))
            watermark = seq
            updates.append((head, agent_id, seq))
        cursor.close()
        self._db.executemany("UPDATE events SET chain = ? WHERE agent_id = ? AND sequence = ?", updates)
        return watermark, head

    def watermark(self, agent_id: str) -> int:
        """Highest contiguous sequence stored for the agent (0 when none)."""
        return self.chain_head(agent_id)[0]

    def chain_head(self, agent_id: str) -> tuple[int, bytes]:
        """(watermark, chain value at the watermark) of one agent."""
        with self._lock:
            if self._readonly:
                row = self._db.execute(
                    "SELECT watermark, head FROM chains WHERE agent_id = ?", (agent_id,)
                ).fetchone()
                return (0, chain.GENESIS) if row is None else (int(row[0]), bytes(row[1]))
            state = self._chain_state(agent_id)
            return state.watermark, state.head

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
        sql = "SELECT chain, data FROM events"
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
                for link, data in rows:
                    mapping = protos_events.to_mapping(pb.Event.FromString(data))
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
            self._execute(
                "INSERT OR REPLACE INTO alerts (id, ts, policy_id, severity, body) VALUES (?, ?, ?, ?, ?)",
                row,
            )

    def alerts(self, limit: int = 100, since: str | None = None) -> list[Mapping]:
        """The newest `limit` alerts at or after `since`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM alerts WHERE ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
                (since or "", max(0, limit)),
            ).fetchall()
        out: list[Mapping] = [json.loads(r[0]) for r in reversed(rows)]
        return out

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
                " a.backlog, a.gaps, a.lost, a.config_version, COALESCE(c.watermark, 0)"
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

    def close(self) -> None:
        """Close the database (every write is already committed)."""
        with self._lock:
            self._db.close()
