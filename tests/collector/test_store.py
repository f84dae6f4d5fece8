"""The Store contract, written once, run against every implementation (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.evidence import chain
from collector.store import (
    AgentUpdate,
    EventFilter,
    Store,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    open_store,
)
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SqliteStore
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
