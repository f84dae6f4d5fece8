"""The PostgreSQL store: for fleets, and for several collectors behind one address.

Same semantics and hash chain as the SQLite store (collector/store/sqlite.py): events keyed by
(agent id, sequence), the `stored` prefix per agent that the collector acknowledges, and the
chain computed over the same ECS mappings, sealed by compare-and-set on `sealed`.

One difference in layout: chain values live in a table of their own (`chain_values`), not in
a column of `events`. PostgreSQL never updates a row in place; sealing would write every
event row a second time (and leave the first for vacuum), where inserting 40-byte rows is cheap.

Unlike SQLite, another collector may write the same database at the same time, so nothing
about an agent is cached between transactions: ingest locks the agents' `chains` rows
(`FOR UPDATE`, in agent-id order, so two writers never deadlock) and reads their prefix under
the lock; sealing and pruning take the same row lock first. Under that lock the stored
sequences are known exactly, so new rows go in with one binary COPY (no per-row conflict check).

Text columns that are sorted or compared (`ts`, ids) use the "C" collation: ECS time strings
and agent ids must order bytewise, as they do in SQLite, whatever the database's locale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg import errors as pg_errors

from collector.store import base, domain, grants, outbox, pgconnect, presence, triage
from collector.store import sql as shared
from collector.store.domain import PostgresTransaction, Transaction
from collector.store.rows import DATA_COLUMN, event_row, stored_mapping
from common.ecstime import ecs_now
from protos import chain
from protos import exfilguard_pb2 as pb

if TYPE_CHECKING:
    from collector.store.ledger_postgres import PostgresLedger

log = logging.getLogger("exfilguard.collector.store")

SCHEMA_VERSION = 10  # 2: alert triage (alerts.status, alert_triage); 3: chains.watermark named sealed;
# 4: fleet presence (store/presence.py); 5: the signing key of each collector's lease;
# 6: prevention exceptions officers grant (store/grants.py); 7: an events index by event id, dropped by 10;
# 8: the alert outbox (store/outbox.py); 9: who revoked a grant (grants.revoked_by);
# 10: the events index by event id dropped (sql.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    agent_id TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL,
    event_id TEXT COLLATE "C" NOT NULL,
    ts TEXT COLLATE "C" NOT NULL,
    action TEXT NOT NULL,
    host TEXT NOT NULL,
    user_name TEXT NOT NULL,
    device_serial TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (agent_id, sequence)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS chain_values (
    agent_id TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (agent_id, sequence)
);
CREATE TABLE IF NOT EXISTS chains (
    agent_id TEXT COLLATE "C" PRIMARY KEY,
    stored BIGINT NOT NULL DEFAULT 0,
    max_sequence BIGINT NOT NULL DEFAULT 0,
    watermark BIGINT NOT NULL DEFAULT 0,
    head BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT COLLATE "C" PRIMARY KEY,
    host TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    first_seen TEXT COLLATE "C" NOT NULL DEFAULT '',
    last_seen TEXT COLLATE "C" NOT NULL DEFAULT '',
    last_heartbeat TEXT COLLATE "C" NOT NULL DEFAULT '',
    connected BOOLEAN NOT NULL DEFAULT false,
    backlog BIGINT NOT NULL DEFAULT 0,
    gaps BIGINT NOT NULL DEFAULT 0,
    lost BIGINT NOT NULL DEFAULT 0,
    config_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT COLLATE "C" PRIMARY KEY,
    ts TEXT COLLATE "C" NOT NULL,
    policy_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE TABLE IF NOT EXISTS evidence_checkpoints (
    agent_id TEXT COLLATE "C" PRIMARY KEY,
    sequence BIGINT NOT NULL,
    chain BYTEA NOT NULL,
    pruned_at TEXT NOT NULL,
    pruned_total BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS exfilguard_schema (version INTEGER NOT NULL)
"""

# Version 1 -> 2: the alert's triage status (a column, so filters and retention use an index)
# and its append-only history. Statuses a body already carried (retention honoured them) stay.
_TRIAGE_SCHEMA = (
    "ALTER TABLE alerts ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'open'",
    "CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, ts)",
    "CREATE TABLE IF NOT EXISTS alert_triage (seq BIGSERIAL PRIMARY KEY,"
    ' alert_id TEXT COLLATE "C" NOT NULL, at TEXT COLLATE "C" NOT NULL, by_name TEXT NOT NULL,'
    " from_status TEXT NOT NULL, to_status TEXT NOT NULL, note TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS alert_triage_alert ON alert_triage (alert_id, seq)",
    "CREATE OR REPLACE FUNCTION exfilguard_append_only() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
    "CREATE TRIGGER alert_triage_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON alert_triage"
    " FOR EACH STATEMENT EXECUTE FUNCTION exfilguard_append_only()",
)
_LEGACY_STATUS = (
    "UPDATE alerts SET status = body::jsonb ->> 'status' WHERE body::jsonb ->> 'status' = ANY(%s::text[])"
)

# Column order of event_row() without its chain column; the benchmark baseline copies the same rows.
EVENT_COLUMNS = "agent_id, sequence, event_id, ts, action, host, user_name, device_serial, data"
EVENT_TYPES = ["text", "int8", "text", "text", "text", "text", "text", "text", "bytea"]
COPY_EVENTS = f"COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_CHAIN_VALUES = "COPY chain_values (agent_id, sequence, value) FROM STDIN (FORMAT BINARY)"

_UPSERT_AGENT = """
INSERT INTO agents (id, host, version, first_seen, last_seen, last_heartbeat, connected, backlog,
                    config_version, collector)
VALUES (%(id)s, COALESCE(%(host)s::text, ''), COALESCE(%(version)s::text, ''), %(first_seen)s,
        COALESCE(%(seen)s::text, ''), COALESCE(%(heartbeat)s::text, ''),
        COALESCE(%(connected)s::boolean, false), COALESCE(%(backlog)s::bigint, 0),
        COALESCE(%(config_version)s::text, ''),
        CASE WHEN %(connected)s::boolean THEN COALESCE(%(collector)s::text, '') ELSE '' END)
ON CONFLICT (id) DO UPDATE SET
    host = COALESCE(%(host)s::text, agents.host),
    version = COALESCE(%(version)s::text, agents.version),
    -- several collectors write here: the latest word on when the agent was seen wins
    last_seen = CASE WHEN %(seen)s::text > agents.last_seen THEN %(seen)s::text ELSE agents.last_seen END,
    last_heartbeat = COALESCE(%(heartbeat)s::text, agents.last_heartbeat),
    -- only the collector the stream is on may say it ended (store/presence.py)
    connected = CASE WHEN %(connected)s::boolean IS NULL THEN agents.connected
                     WHEN %(connected)s::boolean OR %(collector)s::text IS NULL
                          OR agents.collector IN ('', %(collector)s::text) THEN %(connected)s::boolean
                     ELSE agents.connected END,
    collector = CASE WHEN %(connected)s::boolean AND %(collector)s::text IS NOT NULL
                     THEN %(collector)s::text ELSE agents.collector END,
    silent_at = CASE WHEN %(seen)s::text > agents.silent_at THEN '' ELSE agents.silent_at END,
    backlog = COALESCE(%(backlog)s::bigint, agents.backlog),
    config_version = COALESCE(%(config_version)s::text, agents.config_version)
"""

_ADD_GAPS = """
INSERT INTO agents (id, first_seen, gaps, lost) VALUES (%s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET gaps = agents.gaps + excluded.gaps, lost = agents.lost + excluded.lost
"""

# (chained before, chained after, new head, (chain value, sequence) pairs) of one agent
_ChainWork = tuple[int, int, bytes, list[tuple[bytes, int]]]

_STREAM_CHUNK = 500
_RETRIES = 3  # a deadlock or serialization failure between two collectors is retried


def _now() -> str:
    return ecs_now()


def events_row(agent_id: str, event: pb.Event) -> tuple[Any, ...]:
    """The events-table row of one event (column order of EVENT_COLUMNS)."""
    row = event_row(agent_id, event)
    return row[:8] + row[9:]  # SQLite's chain column lives in chain_values here


class PostgresStore(shared.SqlStore):
    """PostgreSQL implementation of `Store`; one connection, safe to call from several threads (one lock)."""

    dialect = shared.POSTGRES
    _db: pgconnect.Connection

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.location = pgconnect.describe(url)
        self._url = url
        self._readonly = readonly
        self._lock = threading.Lock()
        self._domain: domain.DomainSql | None = None
        self._known: set[str] = set()  # agents whose chains row exists (rows are never deleted)
        self._version = SCHEMA_VERSION
        self._db = pgconnect.connect(url, readonly=readonly, application="exfilguard-collector")
        try:
            self._prepare()
        except psycopg.Error as exc:
            self._db.close()
            if isinstance(exc, pg_errors.InsufficientPrivilege):
                raise base.StoreUnavailable(self.location, f"permission denied: {self._scrub(exc)}") from None
            reason = f"not a usable ExfilGuard store: {self._scrub(exc)}"
            raise base.StoreCorrupt(self.location, reason) from None
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ set-up

    def _scrub(self, exc: BaseException) -> str:
        return " ".join(pgconnect.scrub(str(exc), self._url).split())

    def _schema_version(self) -> int:
        if self._db.execute("SELECT to_regclass('exfilguard_schema')").fetchone() == (None,):
            return 0
        row = self._db.execute("SELECT MAX(version) FROM exfilguard_schema").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _prepare(self) -> None:
        version = self._schema_version()
        if version < SCHEMA_VERSION and not self._readonly:
            with self._db.transaction():
                # Two collectors starting at once on an empty database: one creates, the other waits.
                self._db.execute("SELECT pg_advisory_xact_lock(hashtext('exfilguard schema'))")
                version = self._schema_version()
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        self._db.execute(statement)
                if version < 2:
                    for statement in _TRIAGE_SCHEMA:
                        self._db.execute(statement)
                    self._db.execute(_LEGACY_STATUS, (list(triage.CLOSED_STATUSES),))
                if version < 3:
                    self._db.execute(shared.RENAME_SEALED)
                if version < 4:
                    for statement in presence.POSTGRES_SCHEMA:
                        self._db.execute(statement)
                if version < 5:
                    for statement in presence.POSTGRES_SCHEMA_5:
                        self._db.execute(statement)
                if version < 6:
                    for statement in grants.POSTGRES_SCHEMA_6:
                        self._db.execute(statement)
                if version < 8:
                    self._db.execute(outbox.SCHEMA_8)
                if version < 9:
                    self._db.execute(grants.POSTGRES_SCHEMA_9)
                if version < 10:
                    self._db.execute(shared.DROP_EVENT_ID_INDEX)  # made by version 7 (sql.py)
                if version < SCHEMA_VERSION:
                    self._db.execute("INSERT INTO exfilguard_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        self._version = version  # read-only on an older schema: alerts without triage read as open
        if version == 0:
            raise base.StoreCorrupt(
                self.location, "not an ExfilGuard store (no schema; has the collector run yet?)"
            )
        if version > SCHEMA_VERSION:
            raise base.StoreCorrupt(
                self.location, f"schema version {version} is newer than this collector's ({SCHEMA_VERSION})"
            )

    def _connection(self) -> pgconnect.Connection:
        """The connection, opened again if the server dropped it (restart, failover)."""
        if self._db.closed or self._db.broken:
            self._db.close()
            self._db = pgconnect.connect(
                self._url, readonly=self._readonly, application="exfilguard-collector"
            )
        return self._db

    def _fail(self, what: str, exc: BaseException) -> base.StoreError:
        if isinstance(exc, psycopg.OperationalError) and self._db.broken:
            return base.StoreUnavailable(self.location, f"{what} failed, connection lost: {self._scrub(exc)}")
        return base.StoreError(self.location, f"{what} failed: {self._scrub(exc)}")

    # ------------------------------------------------------------------ events

    def ingest_batches(
        self, batches: Sequence[tuple[str, Sequence[pb.Event]]], *, seal: bool = True
    ) -> list[base.IngestResult]:
        """Store batches of several agents in one transaction; see `Store.ingest_batches`."""
        self._writable()
        with self._lock:
            for attempt in range(_RETRIES):
                try:
                    return self._ingest(batches, seal)
                except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                    if attempt == _RETRIES - 1:
                        raise self._fail("ingest", exc) from None
                except (psycopg.Error, OverflowError) as exc:  # OverflowError: a sequence beyond int64
                    raise self._fail("ingest", exc) from None
            raise AssertionError("unreachable")

    def _ingest(
        self, batches: Sequence[tuple[str, Sequence[pb.Event]]], seal: bool
    ) -> list[base.IngestResult]:
        db = self._connection()
        agents = sorted({agent_id for agent_id, _ in batches})
        with db.transaction(), db.cursor() as cur:
            states = self._lock_chains(cur, [a for a in agents if a not in self._known], agents)
            gone = [a for a in agents if a not in states]
            if gone:
                # Rows this process saw are gone: the database was restored, or failed over to a
                # copy that lacks them. Start their chains again rather than fail every batch.
                log.error("chain rows missing for %d agents (database restored or failed over?); "
                          "starting them again", len(gone))
                states.update(self._lock_chains(cur, gone, gone))
            pending: list[tuple[Any, ...]] = []
            results = [
                self._ingest_one(cur, agent_id, batch, states[agent_id], pending)
                for agent_id, batch in batches
            ]
            self._copy(cur, pending)
            cur.execute(
                "UPDATE chains SET stored = v.stored, max_sequence = v.max_sequence"
                " FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS v(agent_id, stored, max_sequence)"
                " WHERE chains.agent_id = v.agent_id",
                (agents, [states[a].stored for a in agents], [states[a].max_sequence for a in agents]),
            )
            if seal:
                for agent_id in agents:
                    self._seal_agent(cur, agent_id, None)
        self._known.update(agents)
        return results

    @staticmethod
    def _lock_chains(cur: psycopg.Cursor[Any], new: list[str], agents: list[str]) -> dict[str, shared.Prefix]:
        """Create chain rows for `new` agents, then lock and read those of `agents`."""
        if new:
            cur.execute(
                "INSERT INTO chains (agent_id, head) SELECT a, %s FROM unnest(%s::text[]) AS a"
                " ON CONFLICT (agent_id) DO NOTHING",
                (chain.GENESIS, new),
            )
        cur.execute(
            "SELECT agent_id, stored, max_sequence FROM chains WHERE agent_id = ANY(%s)"
            " ORDER BY agent_id FOR UPDATE",
            (agents,),
        )
        return {str(r[0]): shared.Prefix(int(r[1]), int(r[2])) for r in cur.fetchall()}

    def _copy(self, cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with cur.copy(COPY_EVENTS) as copy:
            copy.set_types(EVENT_TYPES)
            for row in rows:
                copy.write_row(row)
        rows.clear()

    def _ingest_one(
        self,
        cur: psycopg.Cursor[Any],
        agent_id: str,
        batch: Sequence[pb.Event],
        state: shared.Prefix,
        pending: list[tuple[Any, ...]],
    ) -> base.IngestResult:
        fresh: dict[int, pb.Event] = shared.fresh_events(batch, state.stored)
        if not fresh:
            return base.IngestResult(agent_id, state.stored, [])
        order = sorted(fresh)
        if order[-1] > 0x7FFF_FFFF_FFFF_FFFF:
            raise OverflowError(f"sequence {order[-1]} does not fit a 64-bit integer")
        holes = state.max_sequence > state.stored
        if holes:
            # Some of these may already be stored above the hole: look, with earlier rows written.
            self._copy(cur, pending)
            cur.execute(
                "SELECT sequence FROM events WHERE agent_id = %s AND sequence BETWEEN %s AND %s",
                (agent_id, order[0], order[-1]),
            )
            present = {int(r[0]) for r in cur.fetchall()}
            order = [s for s in order if s not in present]
            if not order:
                return base.IngestResult(agent_id, state.stored, [])
        new = [fresh[s] for s in order]
        rows = [events_row(agent_id, e) for e in new]
        pending.extend(rows)
        gaps = [e.exfilguard.gap.lost for e in new if e.event.action == "agent.gap"]
        if gaps:
            cur.execute(_ADD_GAPS, (agent_id, _now(), len(gaps), sum(gaps)))
        state.max_sequence = max(state.max_sequence, order[-1])
        if holes:
            self._copy(cur, pending)
            state.stored = self._contiguous_end(cur, agent_id, state.stored)
        else:
            # Nothing was stored above the prefix: the new sequences alone say how far it reaches.
            for seq in order:
                if seq != state.stored + 1:
                    break
                state.stored = seq
        return base.IngestResult(agent_id, state.stored, new, [row[DATA_COLUMN] for row in rows])

    def _contiguous_end(self, cur: psycopg.Cursor[Any], agent_id: str, stored: int) -> int:
        """Walk up from `stored` while the next sequence is present (a hole just filled)."""
        cur.execute(self.dialect.sql(shared.ABOVE_PREFIX), (agent_id, stored))
        return shared.contiguous_end(stored, cur)

    # ------------------------------------------------------------------- chain

    def seal(self, limit: int | None = None) -> int:
        """Chain stored, not yet chained events (at most about `limit`); returns how many were chained.

        The hashing runs outside any transaction; the result is written only if nobody moved the
        chain meanwhile (compare-and-set on `sealed`).
        """
        self._writable()
        with self._lock:
            try:
                db = self._connection()
                with db.cursor() as cur:
                    cur.execute("SELECT agent_id FROM chains WHERE sealed < stored ORDER BY agent_id")
                    agents = [str(r[0]) for r in cur.fetchall()]
                    done = 0
                    for agent_id in agents:
                        if limit is not None and done >= limit:
                            break
                        work = self._chain_work(cur, agent_id, None if limit is None else limit - done)
                        if work is None:
                            continue
                        with db.transaction():
                            if self._apply_chain(cur, agent_id, work):
                                done += len(work[3])
                    return done
            except psycopg.Error as exc:
                raise self._fail("sealing", exc) from None

    def _seal_agent(self, cur: psycopg.Cursor[Any], agent_id: str, limit: int | None) -> int:
        """Chain one agent's unchained prefix inside the caller's transaction."""
        work = self._chain_work(cur, agent_id, limit)
        if work is None:
            return 0
        self._apply_chain(cur, agent_id, work)
        return len(work[3])

    def _chain_work(self, cur: psycopg.Cursor[Any], agent_id: str, limit: int | None) -> _ChainWork | None:
        """(chained before, chained after, new head, (sequence, value) pairs) for one agent, or None."""
        cur.execute("SELECT sealed, head, stored FROM chains WHERE agent_id = %s", (agent_id,))
        row = cur.fetchone()
        if row is None:
            return None
        before, head, stored = int(row[0]), bytes(row[1]), int(row[2])
        upto = stored if limit is None else min(stored, before + limit)
        if upto <= before:
            return None
        cur.execute(
            "SELECT sequence, sequence, data FROM events WHERE agent_id = %s AND sequence > %s"
            " AND sequence <= %s ORDER BY sequence",
            (agent_id, before, upto),
        )
        sealed, head, values = shared.link_rows(self.location, agent_id, before, head, cur.fetchall())
        return (before, sealed, head, values) if values else None

    def _apply_chain(self, cur: psycopg.Cursor[Any], agent_id: str, work: _ChainWork) -> bool:
        """Write chain values if the agent's chain still ends at `before` (compare-and-set)."""
        before, after, head, values = work
        cur.execute(
            "UPDATE chains SET sealed = %s, head = %s WHERE agent_id = %s AND sealed = %s",
            (after, head, agent_id, before),
        )
        if cur.rowcount != 1:
            return False
        with cur.copy(COPY_CHAIN_VALUES) as copy:
            copy.set_types(["text", "int8", "bytea"])
            for value, sequence in values:
                copy.write_row((agent_id, sequence, value))
        return True

    def watermark(self, agent_id: str) -> int:
        """Highest contiguous sequence stored for the agent (0 when none): what the collector acks."""
        row = self._one("SELECT stored FROM chains WHERE agent_id = %s", (agent_id,))
        return 0 if row is None else int(row[0])

    def events(self, where: base.EventFilter | None = None) -> Iterator[base.Mapping]:
        """Stream stored events as mappings in (agent, sequence) order; see `Store.events`."""
        clauses, params = self._event_clauses(where or base.EventFilter(), "e.")
        sql = (
            "SELECT c.value, e.data, e.agent_id, e.sequence FROM events e LEFT JOIN chain_values c"
            " ON c.agent_id = e.agent_id AND c.sequence = e.sequence"
        )
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY e.agent_id, e.sequence"
        return self._stream(self._q(sql), params)

    def _stream(self, sql: str, params: list[Any]) -> Iterator[base.Mapping]:
        # A connection of its own and a server-side cursor: a long export reads one consistent
        # snapshot in chunks and never holds the writer's lock.
        reader = pgconnect.connect(self._url, readonly=True, application="exfilguard-reader")
        try:
            reader.autocommit = False
            reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with reader.cursor("exfilguard_events", binary=True) as cur:
                cur.itersize = _STREAM_CHUNK
                cur.execute(sql, params)  # built from the fixed fragments above
                for row in cur:
                    link, data, agent_id, sequence = cast(tuple[bytes | None, bytes, str, int], row)
                    mapping = stored_mapping(self.location, agent_id, sequence, data)
                    if link is not None:
                        mapping["exfilguard.chain.hash"] = link.hex()
                    yield mapping
        except psycopg.Error as exc:
            raise base.StoreError(self.location, f"reading events failed: {self._scrub(exc)}") from None
        finally:
            reader.close()

    # ------------------------------------------------------------------ alerts

    @contextlib.contextmanager
    def _statements(self, what: str) -> Iterator[Transaction]:
        with self._lock:
            try:
                db = self._connection()
                with db.transaction(), db.cursor() as cur:
                    yield PostgresTransaction(cur)
            except psycopg.Error as exc:
                raise self._fail(what, exc) from None

    # ---------------------------------------------------------------- registry

    def _upsert_agents(self, params: list[dict[str, Any]]) -> None:
        with self._lock:
            try:
                db = self._connection()
                with db.transaction(), db.cursor() as cur:
                    cur.executemany(_UPSERT_AGENT, params)
            except psycopg.Error as exc:
                raise self._fail("registry update", exc) from None

    def mark_all_disconnected(self, collector: str | None = None) -> None:
        """Clear the connected flags (only `collector`'s, when named: the others' streams go on)."""
        self._writable()
        if collector is None:
            self._write("UPDATE agents SET connected = false WHERE connected", ())
        else:
            self._write(self._q(presence.DISCONNECT_MINE), (collector,))

    # ------------------------------------------------------------------ misc

    def _all(self, sql: str, params: Sequence[Any], what: str = "query") -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise self._fail(what, exc) from None

    def _write(self, sql: str, params: Sequence[Any], what: str = "write") -> None:
        with self._lock:
            try:
                self._connection().execute(sql, params)
            except psycopg.Error as exc:
                raise self._fail(what, exc) from None

    def _open_domain(self) -> domain.DomainSql:
        return domain.PostgresDomain(self._lock, self._connection, self.location, self._readonly)

    def ledger(self, *, owns_store: bool = False) -> PostgresLedger:
        """The evidence ledger on this store's connection."""
        from collector.store.ledger_postgres import PostgresLedger

        return PostgresLedger(self, owns_store=owns_store)
