"""Schema upgrades beyond the contract's: what each version changes, on SQLite and a real PostgreSQL."""

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

_INDEXES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
    "postgresql": "SELECT indexname FROM pg_indexes WHERE tablename = 'events'",
}


def _raw(store: Store, statements: list[str]) -> list[str]:
    """Run SQL behind the store's back; the names of the events table's indexes afterwards."""
    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.location)) as db, db:
            for sql in statements:
                db.execute(sql)
            return [str(r[0]) for r in db.execute(_INDEXES["sqlite"])]
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store._url, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql.encode())
        return [str(r[0]) for r in conn.execute(_INDEXES["postgresql"].encode())]


def _as_version_7(store: Store) -> list[str]:
    """The store as schema 7 left it: with its index of events by event id."""
    index = ["CREATE INDEX events_event_id ON events (event_id)"]
    if isinstance(store, SqliteStore):
        return _raw(store, [*index, "PRAGMA user_version = 7"])
    return _raw(store, [*index, "DELETE FROM exfilguard_schema", "INSERT INTO exfilguard_schema VALUES (7)"])


def test_the_event_id_index_of_schema_7_is_dropped_and_events_are_still_found_by_id(factory: Factory) -> None:
    """The index made ingest into a store of a million events five times slower (sql.py)."""
    store = factory()
    store.ingest("a", make_events("a", 1, 20))
    store.ingest("b", make_events("b", 1, 20))
    assert "events_event_id" not in _raw(store, [])  # a new store never has it
    wanted = [m["event.id"] for m in store.events()][::7]
    assert "events_event_id" in _as_version_7(store)
    store.close()
    upgraded = factory()
    assert "events_event_id" not in _raw(upgraded, [])
    found = upgraded.events(EventFilter(event_ids=tuple(wanted)))
    assert sorted(m["event.id"] for m in found) == sorted(wanted)
    upgraded.close()
