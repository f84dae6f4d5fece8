"""Schema upgrades beyond the contract's: what each version adds, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3

import psycopg

from collector.store import EventFilter, Store
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SqliteStore
from tests.collector.test_store import Factory, factory, store
from tests.helpers import make_events

__all__ = ["factory", "store"]  # the contract's fixtures: every test here runs on both stores

# Evidence of several agents: the events found by id alone, as the console and `alerts show` ask.
_BY_ID_SQLITE = "SELECT data FROM events WHERE event_id IN (SELECT value FROM json_each(?))"
_BY_ID_POSTGRES = "SELECT data FROM events WHERE event_id = ANY(%s)"


def _plan(store: Store, ids: list[str]) -> str:
    """How the database finds events by id (sequential scans ruled out on PostgreSQL, where a tiny
    table is always cheaper to scan: what is asked is whether an index can serve the query)."""
    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.location)) as db:
            rows = db.execute("EXPLAIN QUERY PLAN " + _BY_ID_SQLITE, (str(ids).replace("'", '"'),))
            return " ".join(str(r[-1]) for r in rows)
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store._url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        return " ".join(str(r[0]) for r in conn.execute("EXPLAIN " + _BY_ID_POSTGRES, (ids,)))


def _downgrade_to_version_6(store: Store) -> None:
    statements = ["DROP INDEX events_event_id"]
    if isinstance(store, SqliteStore):
        statements.append("PRAGMA user_version = 6")
        with contextlib.closing(sqlite3.connect(store.location)) as db, db:
            for sql in statements:
                db.execute(sql)
        return
    assert isinstance(store, PostgresStore)
    statements += ["DELETE FROM exfilguard_schema", "INSERT INTO exfilguard_schema VALUES (6)"]
    with psycopg.connect(store._url, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql.encode())


def test_events_are_found_by_id_through_an_index_also_after_an_upgrade_from_version_6(
    factory: Factory,
) -> None:
    store = factory()
    store.ingest("a", make_events("a", 1, 20))
    store.ingest("b", make_events("b", 1, 20))
    wanted = [m["event.id"] for m in store.events()][::7]
    assert "events_event_id" in _plan(store, wanted)
    _downgrade_to_version_6(store)
    assert "events_event_id" not in _plan(store, wanted)
    store.close()
    upgraded = factory()
    assert "events_event_id" in _plan(upgraded, wanted)
    found = upgraded.events(EventFilter(event_ids=tuple(wanted)))
    assert sorted(m["event.id"] for m in found) == sorted(wanted)
    upgraded.close()
