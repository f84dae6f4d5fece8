"""SQL written once for both stores: the seam the device and baseline tables use.

A domain module (devices.py, baselines.py) writes its statements once, with `?` placeholders and
types both databases share (TEXT, BIGINT), and runs them through `Store.domain()`:

    with store.domain().transaction() as tx:
        rows = tx.query("SELECT serial, body FROM device_sightings WHERE serial = ?", (serial,))

The two adapters below are the only place the dialects differ: the placeholder style (`?` for
sqlite3, `%s` for psycopg), how a table is made append-only (a trigger each), how to ask whether
a table exists, and which driver errors become StoreError. Each adapter runs on its store's own
connection under its store's lock, so domain writes never interleave with ingest.

Tables are created on first use by a writable store (`ensure`); a read-only store (the admin
CLI) sees a table that does not exist yet as empty.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from collector.store.base import StoreError

Row = tuple[Any, ...]


class Transaction(abc.ABC):
    """Statements inside one transaction of a store."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (`?` placeholders); the rows it returns (none for writes)."""

    @abc.abstractmethod
    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abc.abstractmethod
    def has_table(self, name: str) -> bool:
        """True when the table exists."""


class DomainSql(abc.ABC):
    """One store's connection, for the domain modules."""

    def __init__(
        self, lock: threading.Lock, connection: Callable[[], Any], location: str, readonly: bool
    ) -> None:
        # The store's own lock and connection (reopened by the store if the server dropped it).
        self._lock, self._connection, self.location, self.readonly = lock, connection, location, readonly
        self._ensured: set[str] = set()

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """A transaction: committed when the block ends, rolled back (StoreError) on failure."""

    @abc.abstractmethod
    def append_only(self, table: str) -> tuple[str, ...]:
        """Statements that make `table` refuse UPDATE and DELETE (idempotent)."""

    def ensure(self, name: str, statements: Sequence[str]) -> bool:
        """Create a domain's tables once per connection; False on a read-only store (nothing made)."""
        if name in self._ensured:
            return True
        if self.readonly:
            return False
        with self.transaction() as tx:
            for statement in statements:
                tx.query(statement)
        self._ensured.add(name)
        return True


class DomainBook:
    """One domain's records in a store (cases, accounts, devices, ...). A subclass declares its
    tables: `TABLES`, the name `DomainSql.ensure` remembers them by; `CREATE`, the statements that
    make them (idempotent); `APPEND_ONLY`, those of them that refuse UPDATE and DELETE."""

    TABLES: ClassVar[str]
    CREATE: ClassVar[Sequence[str]]
    APPEND_ONLY: ClassVar[Sequence[str]] = ()

    def __init__(self, sql: DomainSql) -> None:
        self.sql = sql
        self.location = sql.location

    def ensure(self) -> bool:
        """Create the tables on a writable store (False on a read-only one)."""
        guards = [statement for table in self.APPEND_ONLY for statement in self.sql.append_only(table)]
        return self.sql.ensure(self.TABLES, [*self.CREATE, *guards])


# ---------------------------------------------------------------------------- SQLite


class SqliteTransaction(Transaction):
    """Statements on a SQLite connection inside a transaction its caller opened."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._db.execute(sql, tuple(params)).fetchall()]

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, [tuple(r) for r in rows])

    def has_table(self, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return bool(self._db.execute(sql, (name,)).fetchall())


PROMPT_RETRY_SECONDS = 0.001


def begin_promptly(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, tried again every millisecond while another connection writes (for as long
    as the connection's busy_timeout). SQLite's own busy handler sleeps longer and longer between
    tries (up to 100 ms): a short write of another process (the sealer's chain, the forward
    process's cursors) overslept the collector's back-to-back commits by up to half a second."""
    busy_ms = int(db.execute("PRAGMA busy_timeout").fetchone()[0])
    db.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + busy_ms / 1000
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(PROMPT_RETRY_SECONDS)
    finally:
        db.execute(f"PRAGMA busy_timeout = {busy_ms}")


class SqliteDomain(DomainSql):
    """The SQLite store's connection (autocommit mode: transactions are explicit)."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            db = self._connection()
            try:
                if self.readonly:
                    db.execute("BEGIN")
                else:
                    begin_promptly(db)  # a write of another process than ingest's must not oversleep
                yield SqliteTransaction(db)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise StoreError(self.location, f"database error: {exc}") from exc
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def append_only(self, table: str) -> tuple[str, ...]:
        return tuple(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            for verb in ("UPDATE", "DELETE")
        )


# ------------------------------------------------------------------------ PostgreSQL


class PostgresTransaction(Transaction):
    """Statements on a psycopg cursor inside a transaction its caller opened (`?` respelt as %s)."""

    def __init__(self, cursor: Any) -> None:
        self._cur = cursor

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cur.execute(_pg(sql), tuple(params))
        return [tuple(r) for r in self._cur.fetchall()] if self._cur.description else []

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(_pg(sql), [tuple(r) for r in rows])

    def has_table(self, name: str) -> bool:
        self._cur.execute("SELECT to_regclass(%s)", (name,))
        row = self._cur.fetchone()
        return row is not None and row[0] is not None


def _pg(sql: str) -> str:
    # Domain SQL has no literal '?' or '%' in it (values always travel as parameters).
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDomain(DomainSql):
    """The PostgreSQL store's connection (reopened by the store if the server dropped it)."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        import psycopg  # only a PostgreSQL store gets here

        with self._lock:
            try:
                db = self._connection()
                with db.transaction(), db.cursor() as cur:
                    if not self.readonly:
                        # Two collectors creating the same tables at once would collide.
                        cur.execute("SELECT pg_advisory_xact_lock(hashtext('exfilguard domain'))")
                    yield PostgresTransaction(cur)
            except psycopg.Error as exc:
                # The server's words (no connection string: connecting failed as StoreUnavailable).
                said = " ".join(str(exc).split())[:300]
                raise StoreError(self.location, f"database error: {type(exc).__name__}: {said}") from exc

    def append_only(self, table: str) -> tuple[str, ...]:
        return (
            "CREATE OR REPLACE FUNCTION exfilguard_append_only() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
            f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION exfilguard_append_only()",
        )
