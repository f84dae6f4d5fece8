"""The Store contract, written once, run against every implementation (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from collector.store import (
    AgentUpdate,
    AlertFilter,
    EventFilter,
    Store,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    open_store,
    triage,
)
from collector.store import sqlite as sqlite_store
from collector.store.ledger import open_ledger
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SqliteStore
from protos import chain
from protos import exfilguard_pb2 as pb
from tests.helpers import make_event, make_events

Factory = Callable[..., Store]


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    return lambda readonly=False: SqliteStore(tmp_path / "store.db", readonly=readonly)


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    url = str(request.getfixturevalue("pg_url"))  # a new database of the session's throwaway cluster
    return lambda readonly=False: PostgresStore(url, readonly=readonly)


IMPLEMENTATIONS = {"sqlite": _sqlite, "postgresql": _postgresql}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    make: Callable[[pytest.FixtureRequest, Path], Factory] = IMPLEMENTATIONS[request.param]
    return make(request, tmp_path)


@pytest.fixture
def store(factory: Factory) -> Iterator[Store]:
    opened = factory()
    yield opened
    opened.close()


def _sequences(store: Store, agent: str) -> list[int]:
    return [m["event.sequence"] for m in store.events(EventFilter(agent=agent))]


def test_ingest_is_idempotent_and_returns_the_watermark(store: Store) -> None:
    assert store.ingest("a", make_events("a", 1, 10)) == 10
    assert store.ingest("a", make_events("a", 5, 12)) == 12
    assert store.ingest("a", make_events("a", 1, 12)) == 12
    assert _sequences(store, "a") == list(range(1, 13))
    assert store.count_events("a") == 12
    assert store.watermark("a") == 12
    assert store.watermark("nobody") == 0


def test_result_lists_only_newly_stored_events(store: Store) -> None:
    first = store.ingest_batches([("a", make_events("a", 1, 3))])[0]
    assert [e.event.sequence for e in first.stored] == [1, 2, 3]
    again = store.ingest_batches([("a", make_events("a", 2, 4))])[0]
    assert [e.event.sequence for e in again.stored] == [4]
    # ... with the bytes the store wrote for each, which listeners pass on without serializing again
    for result in (first, again):
        assert result.data == [e.SerializeToString() for e in result.stored]


def test_duplicates_inside_one_batch_are_stored_once(store: Store) -> None:
    batch = make_events("a", 1, 3) + make_events("a", 2, 3)
    assert store.ingest("a", batch) == 3
    assert store.count_events("a") == 3


def test_agents_are_independent_in_one_group_commit(store: Store) -> None:
    results = store.ingest_batches([("a", make_events("a", 1, 5)), ("b", make_events("b", 1, 2))])
    assert [(r.agent_id, r.watermark) for r in results] == [("a", 5), ("b", 2)]
    assert store.count_events() == 7


def test_holes_hold_the_watermark_and_chain_fills_in_order(store: Store) -> None:
    assert store.ingest("a", make_events("a", 4, 6)) == 0
    assert store.ingest("a", make_events("a", 1, 2)) == 2
    assert "exfilguard.chain.hash" not in list(store.events(EventFilter(agent="a")))[-1]
    assert store.ingest("a", make_events("a", 3, 3)) == 6
    prev = chain.GENESIS
    mappings = list(store.events(EventFilter(agent="a")))
    assert [m["event.sequence"] for m in mappings] == [1, 2, 3, 4, 5, 6]
    for mapping in mappings:
        prev = chain.link(prev, mapping)
        assert mapping["exfilguard.chain.hash"] == prev.hex()
    assert store.chain_head("a") == (6, prev)


def test_deferred_sealing_chains_later_in_the_same_values(store: Store, factory: Factory) -> None:
    events = make_events("a", 1, 7)
    assert store.ingest_batches([("a", events[:5])], seal=False)[0].watermark == 5
    assert store.chain_head("a") == (0, chain.GENESIS)
    assert all("exfilguard.chain.hash" not in m for m in store.events())
    assert store.seal(limit=3) == 3
    assert store.chain_head("a")[0] == 3
    assert store.seal() == 2
    assert store.ingest("a", events[5:]) == 7  # inline sealing continues the same chain
    prev = chain.GENESIS
    for mapping in store.events():
        prev = chain.link(prev, mapping)
        assert mapping["exfilguard.chain.hash"] == prev.hex()
    assert store.chain_head("a") == (7, prev)
    assert store.seal() == 0


def test_unsealed_counts_the_sealers_lag_inside_the_stored_prefix(store: Store) -> None:
    assert store.unsealed() == 0
    store.ingest_batches([("a", make_events("a", 1, 5)), ("b", make_events("b", 1, 2))], seal=False)
    store.ingest_batches([("b", make_events("b", 4, 6))], seal=False)  # above a hole: cannot be chained yet
    assert store.unsealed() == 7
    store.seal()
    assert store.unsealed() == 0
    store.ingest("b", make_events("b", 3, 3))  # fills the hole, chained inline
    assert store.unsealed() == 0


def test_two_sealers_never_disagree(factory: Factory) -> None:
    first, second = factory(), factory()
    first.ingest_batches([("a", make_events("a", 1, 50))], seal=False)
    assert first.seal(limit=20) + second.seal() + first.seal() == 50
    heads = {first.chain_head("a"), second.chain_head("a")}
    assert len(heads) == 1
    assert heads.pop()[0] == 50
    first.close()
    second.close()


def test_state_survives_reopen(factory: Factory) -> None:
    first = factory()
    first.ingest("a", make_events("a", 1, 3))
    first.ingest("a", make_events("a", 5, 5))
    first.close()
    second = factory()
    assert second.watermark("a") == 3
    assert second.ingest("a", make_events("a", 4, 4)) == 5
    assert second.count_events("a") == 5
    second.close()


def test_events_filter(store: Store) -> None:
    early = make_event("a", 1, host=pb.Host(name="ws1"), device=pb.Device(serial="SN1"))
    early.timestamp.FromDatetime(dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC))
    late = make_event("a", 2, action="file.copy", user=pb.User(name="bob"))
    late.timestamp.FromDatetime(dt.datetime(2026, 1, 2, 12, tzinfo=dt.UTC))
    other = make_event("b", 1)
    store.ingest("a", [early, late])
    store.ingest("b", [other])

    def ids(**where: object) -> list[str]:
        return [m["event.id"] for m in store.events(EventFilter(**where))]  # type: ignore[arg-type]

    assert ids() == [early.event.id, late.event.id, other.event.id]
    assert ids(host="ws1") == [early.event.id]
    assert ids(user="bob") == [late.event.id]
    assert ids(action="file.copy") == [late.event.id]
    assert ids(device_serial="SN1") == [early.event.id]
    assert ids(agent="b") == [other.event.id]
    assert ids(since=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), agent="a") == [late.event.id]
    assert ids(until=dt.datetime(2026, 1, 2, tzinfo=dt.UTC)) == [early.event.id]


def test_gap_events_count_in_the_registry_once(store: Store) -> None:
    gap = make_event("a", 1, action="agent.gap", exfilguard=pb.Extensions(gap=pb.Gap(lost=9)))
    store.ingest("a", [gap])
    store.ingest("a", [gap])
    (record,) = store.agents()
    assert (record.id, record.gaps, record.lost, record.watermark) == ("a", 1, 9, 1)


def test_registry_upsert_keeps_unset_fields(store: Store) -> None:
    store.upsert_agent("a", host="ws1", version="1.0", connected=True, seen="2026-01-01T00:00:00.000000Z")
    store.update_agents([AgentUpdate("a", backlog=5, heartbeat="2026-01-01T00:01:00.000000Z")])
    (record,) = store.agents()
    assert (record.host, record.version, record.connected, record.backlog) == ("ws1", "1.0", True, 5)
    assert record.first_seen == "2026-01-01T00:00:00.000000Z"
    assert record.last_heartbeat == "2026-01-01T00:01:00.000000Z"
    store.mark_all_disconnected()
    assert not store.agents()[0].connected


def test_registry_says_stopped_when_the_latest_stored_event_is_agent_stop(store: Store) -> None:
    for agent_id in ("stopped", "restarted", "quiet"):
        store.upsert_agent(agent_id, host="ws1", version="1.0", connected=False)
    store.ingest("stopped", [make_event("stopped", 1, action="agent.start"), make_event("stopped", 2),
                             make_event("stopped", 3, action="agent.stop")])
    # a stop delivered late, from the spool, after the next run had started: not stopped
    store.ingest("restarted", [make_event("restarted", 2, action="agent.start")])
    store.ingest("restarted", [make_event("restarted", 1, action="agent.stop")])
    assert {r.id: r.stopped for r in store.agents()} == {"quiet": False, "restarted": False, "stopped": True}


def test_alerts_round_trip_newest_limit_oldest_first(store: Store) -> None:
    for n in range(5):
        when = f"2026-01-01T00:00:0{n}.000000Z"
        store.add_alert({"id": f"al-{n}", "@timestamp": when, "policy.id": "p", "severity": "high"})
    store.add_alert({"id": "al-4", "@timestamp": "2026-01-01T00:00:04.000000Z", "policy.id": "p", "count": 2})
    assert [a["id"] for a in store.alerts(limit=3)] == ["al-2", "al-3", "al-4"]
    assert store.alerts(limit=10)[-1]["count"] == 2
    assert [a["id"] for a in store.alerts(since="2026-01-01T00:00:03.000000Z")] == ["al-3", "al-4"]
    with pytest.raises(StoreError):
        store.add_alert({"id": "x"})


def test_readonly_store_reads_but_never_writes(factory: Factory) -> None:
    writer = factory()
    writer.ingest("a", make_events("a", 1, 2))
    reader = factory(readonly=True)
    assert reader.watermark("a") == 2
    assert [m["event.sequence"] for m in reader.events()] == [1, 2]
    with pytest.raises(StoreError):
        reader.ingest("a", make_events("a", 3, 3))
    reader.close()
    writer.close()


def test_missing_store_read_only_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as err:
        open_store(str(tmp_path / "absent.db"), readonly=True)
    assert err.value.location == str(tmp_path / "absent.db")


def test_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreCorrupt):
        open_store(str(path))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreCorrupt) as err:
        open_store(str(path))
    assert "99" in err.value.message


def test_postgresql_url_opens_the_postgres_store(pg_url: str) -> None:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    assert store.location.startswith("postgresql://127.0.0.1:") and "exfilguard" in store.location
    store.close()


# ------------------------------------------------------------------ alert triage


def _alert(alert_id: str, second: int, **fields: object) -> dict[str, object]:
    when = f"2026-01-01T00:00:{second:02d}.000000Z"
    return {"id": alert_id, "@timestamp": when, "policy.id": "usb-copy", "severity": "high", **fields}


def test_triage_sets_status_and_keeps_an_append_only_history(store: Store) -> None:
    for n in range(3):
        store.add_alert(_alert(f"al-{n}", n))
    assert [a["status"] for a in store.alerts()] == ["open", "open", "open"]
    entries = store.triage_alerts(["al-0", "al-1", "al-0"], "false_positive", by="alice", note="backup job")
    assert [(e.alert_id, e.from_status, e.to_status, e.by) for e in entries] == [
        ("al-0", "open", "false_positive", "alice"),
        ("al-1", "open", "false_positive", "alice"),
    ]
    store.triage_alerts(["al-0"], "open", by="bob", note="same user again next day")
    history = store.alert_history("al-0")
    assert [(h.by, h.from_status, h.to_status, h.note) for h in history] == [
        ("alice", "open", "false_positive", "backup job"),
        ("bob", "false_positive", "open", "same user again next day"),
    ]
    assert history[0].at <= history[1].at and history[0].at.endswith("Z")
    assert store.alert_history("al-2") == []
    alert = store.alert("al-1")
    assert alert is not None and (alert["status"], alert["policy.id"]) == ("false_positive", "usb-copy")
    assert store.alert("nope") is None
    # Storing an alert again (same id) replaces its body but keeps its triage.
    store.add_alert(_alert("al-1", 1, count=3))
    again = store.alert("al-1")
    assert again is not None and (again["status"], again["count"]) == ("false_positive", 3)
    assert len(store.alert_history("al-1")) == 1


def test_triage_of_an_unknown_alert_changes_nothing(store: Store) -> None:
    store.add_alert(_alert("al-1", 1))
    with pytest.raises(triage.AlertNotFound) as err:
        store.triage_alerts(["nope-1", "al-1", "nope-2"], "closed", by="alice", note="done")
    assert err.value.alert_ids == ("nope-1", "nope-2")
    alert = store.alert("al-1")
    assert alert is not None and alert["status"] == "open"
    assert store.alert_history("al-1") == []


@pytest.mark.parametrize(
    "case",
    [
        (["al-1"], "ignored", "alice", "why", "status"),
        (["al-1"], "closed", "alice", "   ", "note"),
        (["al-1"], "closed", "alice", "x" * (triage.MAX_NOTE_CHARS + 1), "note"),
        (["al-1"], "closed", "alice", "ok \x1b[2J", "note"),
        (["al-1"], "closed", "", "why", "by"),
        (["al-1"], "closed", "a" * (triage.MAX_BY_CHARS + 1), "why", "by"),
        ([], "closed", "alice", "why", "ids"),
        ([f"al-{n}" for n in range(triage.MAX_IDS + 1)], "closed", "alice", "why", "ids"),
        (["x" * (triage.MAX_ID_CHARS + 1)], "closed", "alice", "why", "ids"),
    ],
)
def test_triage_inputs_are_limited(store: Store, case: tuple[list[str], str, str, str, str]) -> None:
    ids, status, by, note, field = case
    store.add_alert(_alert("al-1", 1))
    with pytest.raises(triage.InvalidTriage) as err:
        store.triage_alerts(ids, status, by=by, note=note)
    assert err.value.field == field
    assert store.alert_history("al-1") == []


def test_alerts_filter_by_status_severity_and_policy(store: Store) -> None:
    store.add_alert(_alert("al-1", 1, severity="critical"))
    store.add_alert(_alert("al-2", 2, severity="low", **{"policy.id": "usb-unknown-device"}))
    store.add_alert(_alert("al-3", 3, severity="critical", **{"policy.id": "usb-unknown-device"}))
    store.triage_alerts(["al-3"], "resolved", by="alice", note="stick confiscated")

    def ids(
        statuses: list[str] | None = None,
        severities: list[str] | None = None,
        policies: list[str] | None = None,
    ) -> list[str]:
        where = AlertFilter(statuses=statuses, severities=severities, policies=policies)
        return [a["id"] for a in store.alerts(where=where)]

    assert ids(statuses=["open"]) == ["al-1", "al-2"]
    assert ids(statuses=["resolved", "closed"]) == ["al-3"]
    assert ids(severities=["critical"]) == ["al-1", "al-3"]
    assert ids(policies=["usb-unknown-device"], statuses=["open"]) == ["al-2"]
    assert ids(policies=["nothing"]) == []
    assert [a["id"] for a in store.alerts(limit=1, where=AlertFilter(statuses=["open"]))] == ["al-2"]
    with pytest.raises(triage.InvalidTriage):
        store.alerts(where=AlertFilter(statuses=["ignored"]))


def test_event_filter_by_event_ids(store: Store) -> None:
    events = make_events("a", 1, 5) + make_events("b", 1, 3)
    store.ingest("a", events[:5])
    store.ingest("b", events[5:])
    wanted = (events[1].event.id, events[6].event.id, "never-stored")
    assert [(m["agent.id"], m["event.sequence"]) for m in store.events(EventFilter(event_ids=wanted))] == [
        ("a", 2),
        ("b", 2),
    ]
    only_b = EventFilter(agent="b", event_ids=wanted)
    assert [m["event.sequence"] for m in store.events(only_b)] == [2]
    assert list(store.events(EventFilter(event_ids=()))) == []


def test_readonly_store_reads_triage_but_cannot_triage(factory: Factory) -> None:
    writer = factory()
    writer.add_alert(_alert("al-1", 1))
    writer.triage_alerts(["al-1"], "closed", by="alice", note="duplicate of al-0")
    reader = factory(readonly=True)
    assert [a["status"] for a in reader.alerts(where=AlertFilter(statuses=["closed"]))] == ["closed"]
    assert [h.note for h in reader.alert_history("al-1")] == ["duplicate of al-0"]
    with pytest.raises(StoreError):
        reader.triage_alerts(["al-1"], "open", by="alice", note="no")
    reader.close()
    writer.close()


def _raw_execute(store: Store, sql: str) -> None:
    """Run SQL behind the store's back, as a DBA could."""
    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.location)) as db, db:
            db.execute(sql)
    else:
        assert isinstance(store, PostgresStore)
        with psycopg.connect(store._url, autocommit=True) as conn:
            conn.execute(sql.encode())


def test_triage_history_refuses_updates_and_deletes(store: Store) -> None:
    store.add_alert(_alert("al-1", 1))
    store.triage_alerts(["al-1"], "closed", by="alice", note="done")
    for sql in ("UPDATE alert_triage SET note = 'nothing to see'", "DELETE FROM alert_triage"):
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
            _raw_execute(store, sql)
    assert [h.note for h in store.alert_history("al-1")] == ["done"]


def test_a_version_1_store_is_upgraded_keeping_statuses_its_alert_bodies_carried(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in sqlite_store._SCHEMA.split(";"):
            db.execute(statement)
        for n, status in enumerate(("closed", "resolved", "later", None)):
            body = _alert(f"al-{n}", n) | ({"status": status} if status else {})
            db.execute(
                "INSERT INTO alerts (id, ts, policy_id, severity, body) VALUES (?, ?, ?, ?, ?)",
                (body["id"], body["@timestamp"], "usb-copy", "high", json.dumps(body)),
            )
        db.execute("PRAGMA user_version = 1")
    expected = ["closed", "resolved", "open", "open"]
    reader = SqliteStore(path, readonly=True)  # not upgraded yet: read as retention read the bodies
    assert [a["status"] for a in reader.alerts()] == expected
    assert [a["id"] for a in reader.alerts(where=AlertFilter(statuses=["open"]))] == ["al-2", "al-3"]
    assert reader.alert_history("al-0") == []
    reader.close()
    upgraded = SqliteStore(path)
    assert [a["status"] for a in upgraded.alerts()] == expected
    upgraded.triage_alerts(["al-0"], "open", by="alice", note="reopened after upgrade")
    assert upgraded.alert_history("al-0")[0].from_status == "closed"
    upgraded.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION


# Before schema 3 the chained prefix's column was named `watermark` (Store.watermark() is the stored one).
_NAMED_WATERMARK = "ALTER TABLE chains RENAME COLUMN sealed TO watermark"
# Before schema 4 there was no fleet presence (collector/store/presence.py), before 6 no grants.
_UNDO_PRESENCE = (
    "DROP TABLE grants",
    "ALTER TABLE collectors DROP COLUMN signing_key",
    "ALTER TABLE agents DROP COLUMN collector",
    "ALTER TABLE agents DROP COLUMN silent_at",
    "DROP TABLE collectors",
)


def _downgrade_to_version_2(store: Store) -> str:
    """Name the chains column as schema 2 did, behind the store's back."""
    if isinstance(store, SqliteStore):
        for sql in (_NAMED_WATERMARK, *_UNDO_PRESENCE, "PRAGMA user_version = 2"):
            _raw_execute(store, sql)
        return store.location
    assert isinstance(store, PostgresStore)
    version_2 = ("DELETE FROM exfilguard_schema", "INSERT INTO exfilguard_schema VALUES (2)")
    for sql in (_NAMED_WATERMARK, *_UNDO_PRESENCE, *version_2):
        _raw_execute(store, sql)
    return store._url


def test_a_version_2_store_is_read_as_it_is_then_upgraded_to_the_sealed_column(factory: Factory) -> None:
    store = factory()
    store.ingest("a", make_events("a", 1, 5))  # chained in the same transaction
    store.ingest_batches([("a", make_events("a", 6, 8))], seal=False)  # stored, not chained yet
    head = store.chain_head("a")
    assert head[0] == 5
    location = _downgrade_to_version_2(store)
    store.close()
    reader = factory(readonly=True)  # not upgraded: the column is read under its old name
    assert (reader.chain_head("a"), reader.unsealed(), reader.watermark("a")) == (head, 3, 8)
    reader.close()
    with open_ledger(location) as ledger:
        assert [(c.agent_id, c.sealed) for c in ledger.chains()] == [("a", 5)]
    upgraded = factory()  # the upgrade renames the column, in place, keeping its values
    assert (upgraded.chain_head("a"), upgraded.unsealed()) == (head, 3)
    assert upgraded.seal() == 3 and upgraded.chain_head("a")[0] == 8
    upgraded.ingest("a", make_events("a", 9, 9))
    assert upgraded.chain_head("a")[0] == 9 and upgraded.unsealed() == 0
    if isinstance(upgraded, SqliteStore):
        with contextlib.closing(sqlite3.connect(upgraded.location)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION
            assert "sealed" in [r[1] for r in db.execute("PRAGMA table_info(chains)")]
    upgraded.close()
    with open_ledger(location) as ledger:
        assert [(c.agent_id, c.sealed) for c in ledger.chains()] == [("a", 9)]


def _downgrade_to_version_1(store: Store) -> str:
    """Undo the triage schema behind the store's back (a store written before triage existed)."""
    statements = [
        "DROP INDEX alerts_status",
        "ALTER TABLE alerts DROP COLUMN status",
        "DROP TABLE alert_triage",
        _NAMED_WATERMARK,
        *_UNDO_PRESENCE,
    ]
    if isinstance(store, SqliteStore):
        for sql in [*statements, "PRAGMA user_version = 1"]:
            _raw_execute(store, sql)
        return store.location
    assert isinstance(store, PostgresStore)
    for sql in [*statements, "DELETE FROM exfilguard_schema", "INSERT INTO exfilguard_schema VALUES (1)"]:
        _raw_execute(store, sql)
    return store._url


def test_an_old_store_keeps_the_statuses_its_bodies_carried_for_reading_retention_and_upgrade(
    factory: Factory,
) -> None:
    store = factory()
    store.ingest("a", make_events("a", 1, 5))
    ids = [m["event.id"] for m in store.events()]
    for n, status in enumerate(("resolved", "later", None)):
        store.add_alert(_alert(f"al-{n}", n, evidence=[ids[n + 1]]) | ({"status": status} if status else {}))
    location = _downgrade_to_version_1(store)
    store.close()
    expected = ["resolved", "open", "open"]
    reader = factory(readonly=True)  # not upgraded yet: statuses as retention read the bodies
    assert [a["status"] for a in reader.alerts()] == expected
    assert [a["id"] for a in reader.alerts(where=AlertFilter(statuses=["open"]))] == ["al-1", "al-2"]
    assert reader.alert_history("al-0") == []
    reader.close()
    with open_ledger(location) as ledger:
        assert ledger.protected() == {"a": 3}  # al-0 (resolved) cites sequence 2, al-1 sequence 3
    upgraded = factory()
    assert [a["status"] for a in upgraded.alerts()] == expected
    upgraded.triage_alerts(["al-1"], "false_positive", by="alice", note="after the upgrade")
    assert upgraded.alert_history("al-1")[0].from_status == "open"
    with open_ledger(location) as ledger:
        assert ledger.protected() == {"a": 4}
    upgraded.close()


def test_a_stored_event_no_reader_can_convert_is_sealed_and_read_in_its_defined_form(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows an older collector stored unchecked (ingest refuses them now) never stop the chain or a read."""
    batch = make_events("old", 1, 4)
    batch[1].timestamp.nanos = -1
    batch[2].exfilguard.gap.first.seconds = 253_402_300_800 * 10  # far beyond year 9999
    with caplog.at_level("WARNING", logger="exfilguard.collector.store"):
        assert store.ingest_batches([("old", batch)], seal=False)[0].watermark == 4
        assert store.seal() == 4
        read = list(store.events(EventFilter(agent="old")))
    assert store.chain_head("old")[0] == 4
    assert [m["event.sequence"] for m in read] == [1, 2, 3, 4]
    assert "@timestamp" not in read[1]
    assert read[1]["exfilguard.invalid"][0].startswith("@timestamp: seconds=")
    assert read[2]["exfilguard.invalid"][0].startswith("exfilguard.gap.first: seconds=")
    assert "exfilguard.invalid" not in read[0]
    prev = chain.GENESIS
    for mapping in read:  # the chain is over exactly what is read (and exported)
        prev = chain.link(prev, mapping)
    assert prev == store.chain_head("old")[1]
    named = {(r.agent_id, r.sequence) for r in caplog.records if hasattr(r, "sequence")}  # type: ignore[attr-defined]
    assert {("old", 2), ("old", 3)} <= named
