"""Schema upgrades beyond the contract's: what each version adds, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3

import psycopg

from collector.store import EventFilter, Store
from collector.store.grants import GrantRecord
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


def _downgrade(store: Store, version: int, *statements: str) -> None:
    """Undo what the later versions added (`statements`) and record `version` as the schema's."""
    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.location)) as db, db:
            for sql in [*statements, f"PRAGMA user_version = {version}"]:
                db.execute(sql)
        return
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store._url, autocommit=True) as conn:
        for sql in [*statements, "DELETE FROM exfilguard_schema"]:
            conn.execute(sql.encode())
        conn.execute("INSERT INTO exfilguard_schema VALUES (%s)", (version,))


def test_events_are_found_by_id_through_an_index_also_after_an_upgrade_from_version_6(
    factory: Factory,
) -> None:
    store = factory()
    store.ingest("a", make_events("a", 1, 20))
    store.ingest("b", make_events("b", 1, 20))
    wanted = [m["event.id"] for m in store.events()][::7]
    assert "events_event_id" in _plan(store, wanted)
    _downgrade(store, 6, "DROP INDEX events_event_id")
    assert "events_event_id" not in _plan(store, wanted)
    store.close()
    upgraded = factory()
    assert "events_event_id" in _plan(upgraded, wanted)
    found = upgraded.events(EventFilter(event_ids=tuple(wanted)))
    assert sorted(m["event.id"] for m in found) == sorted(wanted)
    upgraded.close()


def test_grants_of_a_version_8_store_read_without_a_revoker_and_the_upgrade_records_one(
    factory: Factory,
) -> None:
    store = factory()
    for grant_id in ("G-1", "G-2"):
        store.add_grant(GrantRecord(grant_id, "ws-17", "alice", "", "carol", "INC-1",
                                    "2026-12-02T12:00:00.000000Z", "2026-12-02T14:00:00.000000Z",
                                    signature="c2ln"))
    store.revoke_grant("G-1", "2026-12-02T13:00:00.000000Z", "dave")
    _downgrade(store, 8, "ALTER TABLE grants DROP COLUMN revoked_by")
    store.close()
    reader = factory(readonly=True)  # an older schema is read as it is
    listed = [(g.id, g.revoked_at[:4], g.revoked_by) for g in reader.grants()]
    assert listed == [("G-1", "2026", ""), ("G-2", "", "")]
    reader.close()
    upgraded = factory()
    revoked = upgraded.revoke_grant("G-2", "2026-12-02T13:30:00.000000Z", "erin")
    assert revoked is not None and revoked.revoked_by == "erin"
    assert [g.revoked_by for g in upgraded.grants()] == ["", "erin"]
    upgraded.close()
