"""Event forwarding, at least once, against real receivers: cursors in the store (SQLite and
PostgreSQL) that never pass an undelivered event, outages (4xx, 5xx, a hang, a connection closed
mid-request) that cost nothing but time, restarts that resume, and ingest that never waits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from admin import main as admin_main
from collector.forward.destinations import HttpDestination
from collector.forward.formatted import Formatted, Formatter
from collector.forward.worker import ForwardWorker
from collector.store import Store, open_store
from collector.store.cursors import CursorBook
from collector.store.leadership import Leadership
from collector.store.sqlite import SqliteStore
from tests.collector.test_store import IMPLEMENTATIONS, Factory
from tests.helpers import make_events, wait_for, write_collector_config
from tests.siem.receivers import HttpReceiver
from tests.siem.schemas import ecs_problems, flatten, ocsf_problems


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    make: Callable[[pytest.FixtureRequest, Path], Factory] = IMPLEMENTATIONS[request.param]
    return make(request, tmp_path)


@pytest.fixture
def stores(factory: Factory) -> Iterator[tuple[Store, Store]]:
    """The collector's store and a read-only connection to it (what each worker reads through)."""
    store = factory()
    reader = factory(readonly=True)
    yield store, reader
    reader.close()
    store.close()


@pytest.fixture
def sqlite_stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """As `stores`, SQLite only: the outage tests are about the worker, not the SQL."""
    store = SqliteStore(tmp_path / "store.db")
    reader = SqliteStore(tmp_path / "store.db", readonly=True)
    yield store, reader
    reader.close()
    store.close()


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


def worker_for(
    stores: tuple[Store, Store],
    receiver: HttpReceiver,
    kind: str = "elasticsearch",
    *,
    fmt: str = "ecs",
    batch_size: int = 7,
    name: str = "elastic",
) -> ForwardWorker:
    store, reader = stores
    destination = HttpDestination(
        kind, receiver.url, index="ev", timeout=0.5, headers={"Authorization": "ApiKey k"}
    )
    return ForwardWorker(
        name,
        destination,
        CursorBook(reader.domain(), store.domain()),
        fmt,
        batch_size=batch_size,
        retry_max=0.2,
    )


def bulk_ids(receiver: HttpReceiver) -> list[str]:
    """Event ids in the order the receiver took them (every _bulk action line)."""
    return [line["create"]["_id"] for r in receiver.accepted for line in r.lines()[::2]]


def stored_ids(store: Store) -> list[str]:
    return [str(m["event.id"]) for m in store.events()]


def test_every_stored_event_reaches_elasticsearch_once_in_order(
    stores: tuple[Store, Store], receiver: HttpReceiver
) -> None:
    store, reader = stores
    store.ingest("agent-a", make_events("agent-a", 1, 20))
    store.ingest("agent-b", make_events("agent-b", 1, 10))
    store.ingest("agent-b", make_events("agent-b", 12, 15))  # a hole at 11: held until it fills
    worker = worker_for(stores, receiver)
    worker.start()
    try:
        wait_for(lambda: len(bulk_ids(receiver)) >= 30, what="30 events forwarded")
        store.ingest("agent-b", make_events("agent-b", 11, 11))
        worker.wake()
        wait_for(lambda: len(bulk_ids(receiver)) >= 35, what="the hole filled and forwarded")
    finally:
        worker.stop()
    ids = bulk_ids(receiver)
    assert sorted(ids) == sorted(stored_ids(store)) and len(ids) == 35  # each once
    sequences = {"agent-a": [], "agent-b": []}  # type: dict[str, list[int]]
    for request in receiver.accepted:
        assert request.path == "/_bulk" and request.headers["authorization"] == "ApiKey k"
        assert request.headers["content-type"] == "application/x-ndjson"
        for action, doc in zip(request.lines()[::2], request.lines()[1::2], strict=True):
            assert action["create"]["_index"] == "ev" and ecs_problems(doc) == []
            flat = flatten(doc)
            sequences[flat["agent.id"]].append(flat["event.sequence"])
    assert sequences == {"agent-a": list(range(1, 21)), "agent-b": list(range(1, 16))}
    assert CursorBook(reader.domain(), store.domain()).load("elastic") == {"agent-a": 20, "agent-b": 15}
    assert worker.figures()["delivered"] == 35


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("status:503", "http_5xx"), ("status:400", "http_4xx"), ("hang", "timeout"), ("close", "connection")],
)
def test_an_outage_holds_the_cursor_and_costs_ingest_nothing(
    sqlite_stores: tuple[Store, Store], receiver: HttpReceiver, mode: str, reason: str
) -> None:
    stores = sqlite_stores
    store, reader = stores
    book = CursorBook(reader.domain(), store.domain())
    store.ingest("agent-a", make_events("agent-a", 1, 10))
    receiver.mode = mode
    worker = worker_for(stores, receiver, batch_size=4)
    worker.start()
    try:
        wait_for(lambda: worker.figures()["failures"][reason] >= 2, what=f"two {reason} failures")
        started = time.monotonic()
        for first in range(11, 211, 50):  # ingest goes on at full speed meanwhile
            store.ingest("agent-a", make_events("agent-a", first, first + 49))
        assert time.monotonic() - started < 5
        assert book.load("elastic") == {}  # nothing was taken, so the cursor did not move
        assert worker.figures()["delivered"] == 0
        receiver.mode = "ok"
        wait_for(
            lambda: worker.figures()["lag_events"] == 0 and len(set(bulk_ids(receiver))) == 210,
            timeout=20,
            what="all 210 events forwarded after the outage",
        )
    finally:
        receiver.release.set()
        worker.stop()
    assert set(bulk_ids(receiver)) == set(stored_ids(store))
    assert book.load("elastic") == {"agent-a": 210}


def test_a_restart_resumes_where_the_cursor_is(stores: tuple[Store, Store], receiver: HttpReceiver) -> None:
    store, _ = stores
    store.ingest("agent-a", make_events("agent-a", 1, 12))
    first = worker_for(stores, receiver, batch_size=5)
    first.start()
    wait_for(lambda: len(bulk_ids(receiver)) == 12, what="the first 12 forwarded")
    first.stop()
    store.ingest("agent-a", make_events("agent-a", 13, 20))
    second = worker_for(stores, receiver, batch_size=5)  # a new collector process, the same store
    second.start()
    try:
        wait_for(lambda: len(bulk_ids(receiver)) >= 20, what="the next 8 forwarded")
    finally:
        second.stop()
    assert sorted(bulk_ids(receiver)) == sorted(stored_ids(store))  # nothing sent twice


def test_destinations_keep_cursors_of_their_own(stores: tuple[Store, Store], receiver: HttpReceiver) -> None:
    store, reader = stores
    store.ingest("agent-a", make_events("agent-a", 1, 6))
    down = HttpReceiver("status:500")
    try:
        up = worker_for(stores, receiver, name="up")
        stuck = worker_for(stores, down, name="down")
        up.start()
        stuck.start()
        wait_for(lambda: len(bulk_ids(receiver)) == 6, what="the healthy destination got everything")
        up.stop()
        stuck.stop()
    finally:
        down.close()
    book = CursorBook(reader.domain(), store.domain())
    assert (book.load("up"), book.load("down")) == ({"agent-a": 6}, {})


def test_splunk_hec_and_ocsf(sqlite_stores: tuple[Store, Store], receiver: HttpReceiver) -> None:
    stores = sqlite_stores
    store, _ = stores
    store.ingest("agent-a", make_events("agent-a", 1, 5))
    worker = worker_for(stores, receiver, kind="splunk-hec", fmt="ocsf")
    worker.start()
    try:
        (request,) = receiver.wait_for(1)
    finally:
        worker.stop()
    assert request.path == "/services/collector/event"
    events = request.lines()
    assert [e["sourcetype"] for e in events] == ["exfilguard:event"] * 5
    assert all(ocsf_problems(e["event"], "file_activity") == [] for e in events)
    assert {e["event"]["metadata"]["uid"] for e in events} == set(stored_ids(store))


def test_items_the_cluster_refuses_hold_the_batch(
    sqlite_stores: tuple[Store, Store], receiver: HttpReceiver
) -> None:
    stores = sqlite_stores
    # errors: true with a 400 item (a mapping conflict) is not delivered, however 200 the answer.
    store, reader = stores
    store.ingest("agent-a", make_events("agent-a", 1, 3))
    receiver.mode = "bulk-refuse"
    worker = worker_for(stores, receiver)
    worker.start()
    try:
        wait_for(lambda: worker.figures()["failures"]["rejected"] >= 2, what="refused batches")
        assert CursorBook(reader.domain(), store.domain()).load("elastic") == {}
        receiver.mode = "ok"
        wait_for(lambda: worker.figures()["lag_events"] == 0 and len(receiver.accepted) > 0, what="recovery")
    finally:
        worker.stop()
    assert set(bulk_ids(receiver)) == set(stored_ids(store))


def test_workers_of_one_destination_on_a_shared_store_forward_once(
    pg_url: str, receiver: HttpReceiver
) -> None:
    # Two collectors sharing PostgreSQL, each with a worker for "elastic": one leads, the other
    # stands by; when the leader stops, the other resumes from the cursors in the store.
    store = open_store(pg_url)
    readers = [open_store(pg_url, readonly=True) for _ in range(2)]
    workers = [
        ForwardWorker(
            "elastic",
            HttpDestination("elasticsearch", receiver.url, timeout=2),
            CursorBook(reader.domain(), store.domain()),
            "ecs",
            batch_size=7,
            lead=Leadership(pg_url, "forward:elastic"),
        )
        for reader in readers
    ]
    try:
        store.ingest("agent-a", make_events("agent-a", 1, 30))
        for worker in workers:
            worker.start()
        wait_for(lambda: len(bulk_ids(receiver)) >= 30, what="30 events forwarded")
        leader = next(w for w in workers if w.leading)
        standby = next(w for w in workers if w is not leader)
        wait_for(lambda: standby.figures()["lag_events"] == 0, what="the standby sees the shared cursor")
        assert standby.figures()["delivered"] == 0 and not standby.leading
        leader.stop()
        store.ingest("agent-a", make_events("agent-a", 31, 50))
        wait_for(
            lambda: len(bulk_ids(receiver)) >= 50, what="the standby forwarding after the leader stopped"
        )
        wait_for(lambda: standby.figures()["delivered"] == 20, what="the standby's count")  # after the answer
        assert standby.leading
        ids = bulk_ids(receiver)
        assert sorted(ids) == sorted(stored_ids(store)) and len(ids) == 50  # each once
    finally:
        for worker in workers:
            worker.stop()
        for opened in (*readers, store):
            opened.close()


def test_exfilguard_forward_shows_how_far_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteStore(tmp_path / "collector.db")
    store.ingest("agent-a", make_events("agent-a", 1, 10))
    CursorBook(store.domain(), store.domain()).save("elastic", {"agent-a": 4}, "2026-12-02T08:00:00.000000Z")
    store.close()
    config = write_collector_config(
        tmp_path,
        forward=[
            {"name": "elastic", "type": "elasticsearch", "url": "https://es.example.com:9200"},
            {"name": "siem", "type": "syslog", "address": "siem.example.com:6514"},
        ],
    )
    assert admin_main(["forward", "--config", str(config), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = {r["name"]: (r["forwarded"], r["stored"], r["behind"]) for r in printed}
    assert rows == {"elastic": (4, 10, 6), "siem": (0, 10, 10)}
    assert admin_main(["forward", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "WHERE", "FORMAT", "FORWARDED", "STORED", "BEHIND"]
    assert table[2].split() == ["siem", "syslog", "siem.example.com:6514/tls", "ecs", "0", "10", "10"]


def test_opensearch_takes_the_bulk_shape(sqlite_stores: tuple[Store, Store], receiver: HttpReceiver) -> None:
    store, _ = sqlite_stores
    store.ingest("agent-a", make_events("agent-a", 1, 2))
    worker = worker_for(sqlite_stores, receiver, kind="opensearch")
    worker.destination.deliver(worker.next_batch())
    worker.destination.close()
    (request,) = receiver.wait_for(1)
    assert request.path == "/_bulk" and [a["create"]["_index"] for a in request.lines()[::2]] == ["ev", "ev"]


def test_cursor_saves_on_sqlite_wait_for_no_fsync(tmp_path: Path) -> None:
    # The forward process relaxes its own connection: ingest's commits keep synchronous = FULL.
    ingesting, forwarding = SqliteStore(tmp_path / "store.db"), SqliteStore(tmp_path / "store.db")
    forwarding.relaxed_commits()
    try:
        for store, expected in ((ingesting, 2), (forwarding, 1)):  # FULL, NORMAL
            with store.domain().transaction() as tx:
                assert tx.query("PRAGMA synchronous") == [(expected,)]
    finally:
        ingesting.close()
        forwarding.close()


def test_a_format_no_destination_asks_for_is_not_laid_out_ahead(sqlite_stores: tuple[Store, Store]) -> None:
    store, reader = sqlite_stores
    store.ingest("agent-a", make_events("agent-a", 1, 15))
    rows = CursorBook(reader.domain(), store.domain()).batch([("agent-a", 0, 15)], 15, 15)
    shared = Formatted(Formatter(reader.location), {"es": "ecs", "siem": "ocsf"}, size=100)
    shared.away("siem")  # away from the start: not laid out ahead for it
    shared.get(rows[:5], "ecs", "es")
    assert shared.conversions == 5
    shared.get(rows[:5], "ocsf", "siem")  # now it asks: laid out for it (and kept for both)
    assert shared.conversions == 15
    shared.get(rows[5:10], "ecs", "es")
    assert shared.conversions == 25  # both asked lately: each new event in both formats at once
    ocsf = shared.get(rows[5:10], "ocsf", "siem")
    assert shared.conversions == 25
    assert ocsf == Formatter(reader.location).get(rows[5:10], "ocsf")  # ids, times, hosts, JSON
    shared.away("siem")  # its delivery failed: in its backoff, it asks for nothing
    shared.get(rows[10:], "ecs", "es")
    assert shared.conversions == 30
    shared.get(rows[10:], "ecs", "es")  # alone: nothing is kept for others
    assert shared.conversions == 35 and not shared._entries


def test_destinations_of_one_format_share_each_events_json(
    sqlite_stores: tuple[Store, Store], receiver: HttpReceiver
) -> None:
    store, reader = sqlite_stores
    store.ingest("agent-a", make_events("agent-a", 1, 20))
    shared = Formatted(Formatter(reader.location), {"one": "ecs", "two": "ecs"}, size=100)
    workers = [
        ForwardWorker(
            name,
            HttpDestination("elasticsearch", receiver.url, index=name, timeout=2),
            CursorBook(reader.domain(), store.domain()),
            "ecs",
            batch_size=7,
            formatter=shared,
        )
        for name in ("one", "two")
    ]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: len(bulk_ids(receiver)) >= 40, what="20 events to each destination")
    finally:
        for worker in workers:
            worker.stop()
    by_index = {"one": [], "two": []}  # type: dict[str, list[str]]
    for request in receiver.accepted:
        for action, doc in zip(request.lines()[::2], request.lines()[1::2], strict=True):
            by_index[action["create"]["_index"]].append(json.dumps(doc))
    assert by_index["one"] == by_index["two"] and len(by_index["one"]) == 20
    assert shared.conversions == 20  # each event laid out once, not once per destination
