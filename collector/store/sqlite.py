"""The embedded default store: one SQLite file in WAL mode.

Events are keyed by (agent id, sequence), so a resent batch is skipped, never stored
twice. Each row keeps the serialized protobuf (the full event) and the columns exports filter
on; its link in the agent's hash chain (protos/chain.py) is in `chain_blocks` (chainblocks.py),
or in its own `chain` column when a store older than schema 11 chained it.

Two prefixes per agent, both in the `chains` table:
  - `stored`: the highest sequence up to which every event is stored; what the collector
    acknowledges. Events above a hole are stored but do not move it until the hole fills.
  - `sealed` / `head`: how far the hash chain has been computed, and its last value (the
    column was `watermark` before schema 3; `Store.watermark()` is the `stored` prefix).
    Sealing (`seal`) chains stored events in sequence order, only inside the `stored` prefix.

Sealing costs ~8 us of Python per event (canonical JSON from the protobuf, two SHA-256; the
values of a step go into one `chain_blocks` row, chainblocks.py), about as much as the rest of
ingest. `ingest_batches(..., seal=True)` (the default, and `ingest`) chains in the same
transaction. The collector passes seal=False and runs `collector.sealer` in a process of its
own, so acks never wait for hashing and the hashing uses the second core; the chain then trails
the acks by moments under load.
Sealing is a compare-and-set on `sealed`, so two sealers can never write different values.

Durability: `synchronous=FULL`. An acknowledged batch lets the agent delete it from its
spool, so a commit must survive power loss, not only a crash. The server groups several
agents' batches into one transaction (`ingest_batches`), so the fsync is paid per group.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from collector.store import base, chainblocks, domain, grants, outbox, presence, triage
from collector.store import sql as shared
from collector.store.domain import SqliteTransaction, Transaction
from collector.store.rows import ACTION_COLUMN, DATA_COLUMN, SEQUENCE_COLUMN, batch_rows, stored_mapping
from common.ecstime import ecs_now
from protos import chain
from protos import exfilguard_pb2 as pb

if TYPE_CHECKING:
    from collector.store.ledger_sqlite import SqliteLedger

SCHEMA_VERSION = 11  # 2: alert triage (alerts.status, alert_triage); 3: chains.watermark named sealed;
# 4: fleet presence (store/presence.py); 5: the signing key of each collector's lease;
# 6: prevention exceptions officers grant (store/grants.py); 7: an events index by event id, dropped by 10;
# 8: the alert outbox (store/outbox.py); 9: who revoked a grant (grants.revoked_by);
# 10: the events index by event id dropped (sql.py); 11: chain values in chain_blocks (chainblocks.py)

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
_LEGACY_STATUS = (
    "UPDATE alerts SET status = json_extract(body, '$.status')"
    " WHERE json_extract(body, '$.status') IN (SELECT value FROM json_each(?))"
)

# Column order of an events row (the benchmark baseline inserts the same tuples).
_BUSY_MS = 10_000  # how long a write waits for another connection's transaction

INSERT_EVENT = (
    "INSERT INTO events (agent_id, sequence, event_id, ts, action, host, user_name, device_serial,"
    " chain, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_UPSERT_AGENT = """
INSERT INTO agents (id, host, version, first_seen, last_seen, last_heartbeat, connected, backlog,
                    config_version, collector)
VALUES (:id, COALESCE(:host, ''), COALESCE(:version, ''), :first_seen, COALESCE(:seen, ''),
        COALESCE(:heartbeat, ''), COALESCE(:connected, 0), COALESCE(:backlog, 0),
        COALESCE(:config_version, ''), CASE WHEN :connected THEN COALESCE(:collector, '') ELSE '' END)
ON CONFLICT (id) DO UPDATE SET
    host = COALESCE(:host, host),
    version = COALESCE(:version, version),
    last_seen = CASE WHEN :seen > last_seen THEN :seen ELSE last_seen END,
    last_heartbeat = COALESCE(:heartbeat, last_heartbeat),
    connected = CASE WHEN :connected IS NULL THEN connected
                     WHEN :connected OR :collector IS NULL OR collector IN ('', :collector) THEN :connected
                     ELSE connected END,
    collector = CASE WHEN :connected AND :collector IS NOT NULL THEN :collector ELSE collector END,
    silent_at = CASE WHEN :seen > silent_at THEN '' ELSE silent_at END,
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


class SqliteStore(shared.SqlStore):
    """SQLite (WAL) implementation of `Store`; safe to call from several threads (one lock)."""

    dialect = shared.SQLITE
    _db: sqlite3.Connection

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.location = str(path)
        self._path = Path(path)
        self._readonly = readonly
        self._lock = threading.Lock()
        self._domain: domain.DomainSql | None = None
        self._prefixes: dict[str, shared.Prefix] = {}
        self._version = SCHEMA_VERSION
        self._db = self._connect()
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise base.StoreCorrupt(self.location, f"not a usable ExfilGuard store: {exc}") from exc

    # ------------------------------------------------------------------ set-up

    def _connect(self) -> sqlite3.Connection:
        try:
            if self._readonly:
                if not self._path.exists():
                    raise base.StoreUnavailable(self.location, "no such store (has the collector run yet?)")
                uri = f"file:{quote(str(self._path.resolve()))}?mode=ro"
                return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise base.StoreUnavailable(self.location, f"cannot open: {exc}") from exc

    def _prepare(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise base.StoreCorrupt(
                self.location, f"schema version {version} is newer than this collector's ({SCHEMA_VERSION})"
            )
        self._version = version
        if self._readonly:
            if version == 0:
                raise base.StoreCorrupt(self.location, "not an ExfilGuard store (no schema)")
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

    def relaxed_commits(self) -> None:
        """Commits on this connection stop waiting for fsync (`synchronous = NORMAL`, WAL still): for
        writes a power cut may undo but a crash may not (forwarding cursors: an older cursor only
        sends events again), so they never hold the write lock through an fsync ingest waits on."""
        if not self._readonly:
            with self._lock:
                self._db.execute("PRAGMA synchronous = NORMAL")

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
        if version < 3:
            db.execute(shared.RENAME_SEALED)
        if version < 4:
            for statement in presence.SQLITE_SCHEMA:
                db.execute(statement)
        if version < 5:
            for statement in presence.SQLITE_SCHEMA_5:
                db.execute(statement)
        if version < 6:
            for statement in grants.SQLITE_SCHEMA_6:
                db.execute(statement)
        if version < 8:
            db.execute(outbox.SCHEMA_8)
        columns = {r[1] for r in db.execute("PRAGMA table_info(grants)")}
        if version < 9 and grants.SCHEMA_9_COLUMN not in columns:
            db.execute(grants.SQLITE_SCHEMA_9)
        if version < 10:
            db.execute(shared.DROP_EVENT_ID_INDEX)  # made by version 7 (sql.py)
        if version < 11:
            db.execute(chainblocks.SCHEMA_11)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ events

    def _prefix(self, agent_id: str) -> shared.Prefix:
        state = self._prefixes.get(agent_id)
        if state is None:
            row = self._db.execute(
                "SELECT stored, max_sequence FROM chains WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            state = shared.Prefix(0, 0) if row is None else shared.Prefix(int(row[0]), int(row[1]))
            self._prefixes[agent_id] = state
        return state

    def ingest_batches(
        self, batches: Sequence[tuple[str, Sequence[pb.Event]]], *, seal: bool = True
    ) -> list[base.IngestResult]:
        """Store batches of several agents in one transaction; see `Store.ingest_batches`."""
        self._writable()
        with self._lock:
            staged: dict[str, shared.Prefix] = {}
            results: list[base.IngestResult] = []
            # OverflowError: a sequence beyond int64
            with self._transaction("ingest", also=(OverflowError,)) as db:
                for agent_id, batch in batches:
                    state = staged.get(agent_id)
                    if state is None:
                        base = self._prefix(agent_id)
                        state = shared.Prefix(base.stored, base.max_sequence)
                    results.append(self._ingest_one(agent_id, batch, state))
                    staged[agent_id] = state
                db.executemany(
                    "INSERT INTO chains (agent_id, stored, max_sequence, sealed, head)"
                    " VALUES (?, ?, ?, 0, ?) ON CONFLICT (agent_id) DO UPDATE SET stored = excluded.stored,"
                    " max_sequence = excluded.max_sequence",
                    [(a, s.stored, s.max_sequence, chain.GENESIS) for a, s in staged.items()],
                )
                if seal:
                    for agent_id in staged:
                        self._seal_agent(agent_id, None)
            # Only a committed transaction moves the cached state.
            self._prefixes.update(staged)
            return results

    @contextlib.contextmanager
    def _transaction(
        self,
        what: str,
        *,
        error: type[base.StoreError] = base.StoreError,
        also: tuple[type[Exception], ...] = (),
    ) -> Iterator[sqlite3.Connection]:
        """A write transaction under the caller's lock: committed at the end of the block, rolled
        back on any exception; a database error (or one of `also`) becomes `error` naming `what`."""
        db = self._db
        caught: tuple[type[Exception], ...] = (sqlite3.Error, *also)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except caught as exc:
            self._rollback()
            raise error(self.location, f"{what} failed: {exc}") from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _ingest_one(
        self, agent_id: str, batch: Sequence[pb.Event], state: shared.Prefix
    ) -> base.IngestResult:
        db = self._db
        first = state.stored + 1
        rows: list[tuple[Any, ...]] | None = None
        if state.max_sequence == state.stored and batch:
            # The usual batch continues the stored prefix exactly: its rows are all there is to it
            # (each event's fields are read once, by the check at the door: CheckedBatch).
            rows = batch_rows(agent_id, batch)
            if [row[SEQUENCE_COLUMN] for row in rows] != list(range(first, first + len(rows))):
                rows = None
        if rows is not None:
            new = list(batch)
            order = [first, first + len(new) - 1]
        else:
            fresh: dict[int, pb.Event] = shared.fresh_events(batch, state.stored)
            if not fresh:
                return base.IngestResult(agent_id, state.stored, [])
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
                    return base.IngestResult(agent_id, state.stored, [])
            new = [fresh[s] for s in order]
            rows = batch_rows(agent_id, new)
        db.executemany(INSERT_EVENT, rows)
        gaps = [new[n].exfilguard.gap.lost for n, row in enumerate(rows) if row[ACTION_COLUMN] == "agent.gap"]
        if gaps:
            db.execute(_ADD_GAPS, (agent_id, _now(), len(gaps), sum(gaps)))
        contiguous = order[0] == first and order[-1] - order[0] + 1 == len(new)
        state.max_sequence = max(state.max_sequence, order[-1])
        if contiguous and state.max_sequence == order[-1]:
            state.stored = order[-1]  # the common case: the batch extends the prefix, no holes
        elif state.max_sequence > state.stored:
            state.stored = self._contiguous_end(agent_id, state.stored)
        return base.IngestResult(agent_id, state.stored, new, [row[DATA_COLUMN] for row in rows])

    def _contiguous_end(self, agent_id: str, stored: int) -> int:
        """Walk up from `stored` while the next sequence is present (a hole just filled)."""
        cursor = self._db.execute(self.dialect.sql(shared.ABOVE_PREFIX), (agent_id, stored))
        stored = shared.contiguous_end(stored, cursor)
        cursor.close()
        return stored

    # ------------------------------------------------------------------- chain

    def seal(self, limit: int | None = None) -> int:
        """Chain stored, not yet chained events (at most about `limit`); returns how many were chained.

        The hashing runs outside any write transaction (WAL readers do not block the ingest
        writer), each agent behind getting an even share of `limit`; the chain values of all of
        them are then written in one transaction, each agent's only if nobody moved its chain
        meanwhile (compare-and-set).
        """
        self._writable()
        with self._lock:
            try:
                behind = self._db.execute("SELECT agent_id FROM chains WHERE sealed < stored")
                agents = [str(r[0]) for r in behind]
                if not agents:
                    return 0
                share = None if limit is None else -(-limit // len(agents))
                works = [(a, w) for a in agents if (w := self._chain_work(a, share)) is not None]
                if not works:
                    return 0
                self._begin_promptly()
                done = 0
                for agent_id, work in works:
                    if self._apply_chain(agent_id, *work):
                        done += len(work[3])
                self._db.execute("COMMIT")
                return done
            except sqlite3.Error as exc:
                self._rollback()
                raise base.StoreError(self.location, f"sealing failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _begin_promptly(self) -> None:
        """BEGIN IMMEDIATE without oversleeping the collector's commits (domain.begin_promptly)."""
        domain.begin_promptly(self._db)

    def _seal_agent(self, agent_id: str, limit: int | None) -> int:
        """Chain one agent's unchained prefix inside the caller's write transaction."""
        work = self._chain_work(agent_id, limit)
        if work is None:
            return 0
        self._apply_chain(agent_id, *work)
        return len(work[3])

    def _chain_work(
        self, agent_id: str, limit: int | None
    ) -> tuple[int, int, bytes, list[tuple[bytes, None]]] | None:
        """(chained before, chained after, new head, event updates) for one agent, or None if nothing."""
        db = self._db
        sql = "SELECT sealed, head, stored FROM chains WHERE agent_id = ?"
        row = db.execute(sql, (agent_id,)).fetchone()
        if row is None:
            return None
        before, head, stored = int(row[0]), bytes(row[1]), int(row[2])
        upto = stored if limit is None else min(stored, before + limit)
        if upto <= before:
            return None
        cursor = db.execute(
            "SELECT NULL, sequence, data FROM events WHERE agent_id = ? AND sequence > ? AND sequence <= ?"
            " ORDER BY sequence",
            (agent_id, before, upto),
        )
        sealed, head, values = shared.link_rows(self.location, agent_id, before, head, cursor)
        cursor.close()
        return (before, sealed, head, values) if values else None

    def _apply_chain(
        self, agent_id: str, before: int, after: int, head: bytes, values: list[tuple[bytes, None]]
    ) -> bool:
        """Write chain values if the agent's chain still ends at `before` (compare-and-set): one
        chain_blocks row for the whole run (chainblocks.py), not an update of each event's row."""
        moved = self._db.execute(
            "UPDATE chains SET sealed = ?, head = ? WHERE agent_id = ? AND sealed = ?",
            (after, head, agent_id, before),
        )
        if moved.rowcount != 1:
            return False
        self._db.execute(chainblocks.INSERT, chainblocks.block_row(agent_id, before + 1, values))
        return True

    def watermark(self, agent_id: str) -> int:
        """Highest contiguous sequence stored for the agent (0 when none): what the collector acks."""
        with self._lock:
            if self._readonly:
                row = self._db.execute("SELECT stored FROM chains WHERE agent_id = ?", (agent_id,)).fetchone()
                return 0 if row is None else int(row[0])
            return self._prefix(agent_id).stored

    def events(self, where: base.EventFilter | None = None) -> Iterator[base.Mapping]:
        """Stream stored events as mappings in (agent, sequence) order; see `Store.events`."""
        clauses, params = self._event_clauses(where or base.EventFilter())
        sql = "SELECT chain, data, agent_id, sequence FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY agent_id, sequence"
        return self._stream(self._q(sql), params)

    def _stream(self, sql: str, params: list[Any]) -> Iterator[base.Mapping]:
        # A connection of its own: a long export reads one consistent WAL snapshot and never
        # holds the writer's lock.
        uri = f"file:{quote(str(self._path.resolve()))}?mode=ro"
        try:
            reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise base.StoreUnavailable(self.location, f"cannot open for reading: {exc}") from exc
        try:
            reader.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            reader.execute("BEGIN")
            cursor = reader.execute(sql, params)
            # Older rows keep their value in events.chain; a store older than schema 11 has no blocks.
            blocks = chainblocks.BlockReader(reader) if self._version >= 11 else None
            while True:
                rows = cursor.fetchmany(_STREAM_CHUNK)
                if not rows:
                    break
                for in_row, data, agent_id, sequence in rows:
                    mapping = stored_mapping(self.location, agent_id, sequence, data)
                    link = in_row
                    if link is None and blocks is not None:
                        link = blocks.value(agent_id, sequence)
                    if link is not None:
                        mapping["exfilguard.chain.hash"] = bytes(link).hex()
                    yield mapping
        except sqlite3.Error as exc:
            raise base.StoreError(self.location, f"reading events failed: {exc}") from exc
        finally:
            reader.close()

    # ------------------------------------------------------------------ alerts

    @contextlib.contextmanager
    def _statements(self, what: str) -> Iterator[Transaction]:
        with self._lock, self._transaction(what) as db:
            yield SqliteTransaction(db)

    # ---------------------------------------------------------------- registry

    def _upsert_agents(self, params: list[dict[str, Any]]) -> None:
        with self._lock, self._transaction("registry update") as db:
            db.executemany(_UPSERT_AGENT, params)

    def mark_all_disconnected(self, collector: str | None = None) -> None:
        """Clear the connected flags (only `collector`'s, when named)."""
        self._writable()
        with self._lock:
            if collector is None:
                self._execute("UPDATE agents SET connected = 0 WHERE connected != 0", ())
            else:
                self._execute(presence.DISCONNECT_MINE, (collector,))

    # ------------------------------------------------------------------ misc

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise base.StoreError(self.location, f"write failed: {exc}") from exc

    def _all(self, sql: str, params: Sequence[Any], what: str = "query") -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise base.StoreError(self.location, f"{what} failed: {exc}") from exc

    def _write(self, sql: str, params: Sequence[Any], what: str = "write") -> None:
        with self._lock:
            self._execute(sql, params)

    def _open_domain(self) -> domain.DomainSql:
        return domain.SqliteDomain(self._lock, lambda: self._db, self.location, self._readonly)

    def ledger(self, *, owns_store: bool = False) -> SqliteLedger:
        """The evidence ledger on this store's connection."""
        from collector.store.ledger_sqlite import SqliteLedger

        return SqliteLedger(self, owns_store=owns_store)
