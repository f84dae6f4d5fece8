"""The console's reads and its case book on both real stores: queue filters, sort and pages, a
timeline and its per-day removable writes, and cases with their append-only history."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from collector.console import queries
from collector.console.cases import CaseBook
from collector.console.errors import InvalidCase, NoSuchCase
from collector.store import Store, StoreError, open_store
from common.ecstime import ecs_time
from tests.console.running import AGENT, NOW, SERIAL, seed

SINCE, UNTIL = ecs_time(NOW.replace(year=NOW.year - 1)), ecs_time(NOW.replace(year=NOW.year + 1))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    if request.param == "sqlite":
        location = str(tmp_path_factory.mktemp("q") / "c.db")
    else:
        location = request.getfixturevalue("pg_url")
    opened = open_store(location)
    seed(opened, accounts=False)
    queries.ensure_indexes(opened)
    yield opened
    opened.close()


def _ids(page: queries.AlertPage) -> list[str]:
    return [str(a["id"]) for a in page.alerts]


def test_queue_filters_sorts_and_pages(store: Store) -> None:
    page = queries.alert_page(store, queries.AlertQuery())
    assert _ids(page) == ["al-bob-usb", "al-alice-copy", "al-alice-read"] and page.total == 3
    assert _ids(queries.alert_page(store, queries.AlertQuery(users=("alice",)))) == [
        "al-alice-copy",
        "al-alice-read",
    ]
    assert _ids(queries.alert_page(store, queries.AlertQuery(hosts=("ws-bob",)))) == ["al-bob-usb"]
    assert _ids(queries.alert_page(store, queries.AlertQuery(devices=(SERIAL,)))) == ["al-alice-copy"]
    assert _ids(queries.alert_page(store, queries.AlertQuery(severities=("low", "medium")))) == [
        "al-bob-usb",
        "al-alice-read",
    ]
    assert _ids(queries.alert_page(store, queries.AlertQuery(policies=("mass-read",)))) == ["al-alice-read"]
    assert _ids(
        queries.alert_page(store, queries.AlertQuery(since=ecs_time(NOW.replace(hour=0, minute=0))))
    ) in (
        ["al-bob-usb"],
        [],  # a run just after midnight: bob's alert was an hour ago
    )
    by_severity = queries.alert_page(store, queries.AlertQuery(sort="severity"))
    assert [a["severity"] for a in by_severity.alerts] == ["high", "medium", "low"]
    paged = queries.alert_page(store, queries.AlertQuery(per_page=2, page=2))
    assert _ids(paged) == ["al-alice-read"] and paged.pages == 2 and paged.total == 3
    store.triage_alerts(["al-alice-read"], "false_positive", by="carol", note="staging test")
    assert _ids(queries.alert_page(store, queries.AlertQuery(statuses=("open",)))) == [
        "al-bob-usb",
        "al-alice-copy",
    ]
    assert queries.policies(store) == ["mass-read", "unknown-usb", "usb-copy-database"]
    store.triage_alerts(["al-bob-usb"], "open", by="carol", note="assigned to dave: first look")
    store.triage_alerts(["al-bob-usb"], "open", by="carol", note="assigned to erin: hand over")
    assert queries.assignees(store, ["al-bob-usb", "al-alice-copy"]) == {"al-bob-usb": "erin"}
    assert _ids(queries.alert_page(store, queries.AlertQuery(users=("' OR 1=1 --",)))) == []
    with pytest.raises(StoreError):
        queries.alert_page(store, queries.AlertQuery(statuses=("gone",)))


def test_timeline_and_removable_days(store: Store) -> None:
    alice = queries.Subject("user", "alice")
    events, more = queries.timeline(store, alice, SINCE, UNTIL, per_page=3)
    assert [e["event.action"] for e in events] == ["file.copy", "file.write", "device.attach"] and more
    events, more = queries.timeline(store, alice, SINCE, UNTIL, page=2, per_page=3)
    assert [e["event.action"] for e in events] == ["file.read"] and not more
    (day,) = queries.removable_days(store, alice, SINCE, UNTIL)
    assert (day.files, day.bytes) == (1, 5 << 20)
    assert queries.removable_days(store, queries.Subject("device", SERIAL), SINCE, UNTIL) == [day]
    assert queries.removable_days(store, queries.Subject("host", "ws-bob"), SINCE, UNTIL) == []
    alerts = queries.subject_alerts(store, alice, SINCE, UNTIL)
    assert [a["id"] for a in alerts] == ["al-alice-read", "al-alice-copy"]  # oldest first


def test_cases_and_their_history(store: Store) -> None:
    book = CaseBook(store.domain())
    case = book.open_case("Alice leaving", owner="carol", by="carol", alerts=["al-alice-copy"])
    assert book.add_alerts(case.id, ["al-alice-copy", "al-alice-read"], by="carol") == 1
    book.note(case.id, "HR informed", by="carol")
    book.set_status(case.id, "in_progress", "police asked for the evidence", by="erin")
    book.set_owner(case.id, "erin", by="carol")
    stored, alerts, history = book.case(case.id)
    assert (stored.owner, stored.status) == ("erin", "in_progress")
    assert alerts == ["al-alice-copy", "al-alice-read"]
    assert [h.action for h in history] == ["created", "alert", "alert", "note", "status", "owner"]
    assert book.cases_of_alert("al-alice-read") == [case.id]
    assert [(c.id, n) for c, n in book.cases()] == [(case.id, 2)]
    with pytest.raises(InvalidCase, match="no such alert"):
        book.add_alerts(case.id, ["al-none"], by="carol")
    with pytest.raises(InvalidCase) as caught:
        book.note(case.id, "  ", by="carol")
    assert caught.value.field == "note"
    with pytest.raises(NoSuchCase):
        book.note("C-NONE", "x", by="carol")
    assert book.add_events(case.id, [(AGENT, 1), (AGENT, 1), (AGENT, 2)], by="carol") == 2
    assert book.add_events(case.id, [(AGENT, 2)], by="carol") == 0
    with pytest.raises(InvalidCase, match="no such event"):
        book.add_events(case.id, [(AGENT, 99)], by="carol")
    refs = book.events_of(case.id)
    assert [(a, q) for a, q, _ in refs] == [(AGENT, 1), (AGENT, 2)]
    assert [e["event.action"] for e in queries.events_by_key(store, refs)] == ["device.attach", "file.read"]
    with pytest.raises(StoreError), store.domain().transaction() as tx:  # append-only
        tx.query("DELETE FROM console_case_history")
    assert len(book.case(case.id)[2]) == 8
