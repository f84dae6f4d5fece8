"""Device sightings, approvals with their history, learning proposals and baselines: one contract,
run on SQLite and a real PostgreSQL (the same SQL on both, collector/store/domain.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.behaviour.enrich import Behaviour
from collector.store import Store, StoreError
from collector.store.baselines import BaselineBook
from collector.store.devices import DeviceBook, InvalidDeviceChange, NoSuchApproval, Sighting, learn
from tests.collector.test_store import IMPLEMENTATIONS, Factory


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    return IMPLEMENTATIONS[request.param](request, tmp_path)


@pytest.fixture
def opened(factory: Factory) -> Iterator[Store]:
    store = factory()
    yield store
    store.close()


def test_approve_revoke_and_an_append_only_history(opened: Store) -> None:
    store = opened
    book = DeviceBook(store.domain())
    assert book.approvals() == [] and book.version() == (0, "")
    book.approve("S-1", by="carol", note="issued by IT")
    book.approve("S-2", scope="user", subject="alice", by="carol", note="alice's stick")
    book.approve("S-2", scope="group", subject="it", by="carol", note="the IT team's")
    assert [(a.serial, a.scope, a.subject, a.by) for a in book.approvals()] == [
        ("S-1", "all", "", "carol"),
        ("S-2", "group", "it", "carol"),
        ("S-2", "user", "alice", "carol"),
    ]
    revoked = book.revoke("S-2", by="dave", note="lost")
    assert sorted((c.scope, c.subject) for c in revoked) == [("group", "it"), ("user", "alice")]
    assert [a.serial for a in book.approvals()] == ["S-1"]
    history = book.history()
    assert [(c.action, c.serial, c.by) for c in history] == [
        ("approve", "S-1", "carol"),
        ("approve", "S-2", "carol"),
        ("approve", "S-2", "carol"),
        ("revoke", "S-2", "dave"),
        ("revoke", "S-2", "dave"),
    ]
    assert [c.note for c in book.history("S-1")] == ["issued by IT"]
    assert book.version()[0] == 5
    with pytest.raises(NoSuchApproval) as missing:
        book.revoke("S-9", by="dave", note="?")
    assert missing.value.serial == "S-9"
    with pytest.raises(StoreError), store.domain().transaction() as tx:
        tx.query("UPDATE device_history SET note = 'rewritten'")
    with pytest.raises(StoreError), store.domain().transaction() as tx:
        tx.query("DELETE FROM device_history")
    assert len(book.history()) == 5


@pytest.mark.parametrize(
    ("case", "field"),
    [
        (("", "all", "", "why"), "serial"),
        (("S-1", "everyone", "", "why"), "scope"),
        (("S-1", "user", "", "why"), "subject"),
        (("S-1", "all", "alice", "why"), "subject"),
        (("S-1", "all", "", "  "), "note"),
        (("S-1", "all", "", "\x1b[2J"), "note"),
    ],
)
def test_bad_approvals_are_refused_by_field(
    opened: Store, case: tuple[str, str, str, str], field: str
) -> None:
    serial, scope, subject, note = case
    with pytest.raises(InvalidDeviceChange) as bad:
        DeviceBook(opened.domain()).approve(serial, scope=scope, subject=subject, by="carol", note=note)
    assert bad.value.field == field


def test_sightings_learning_and_accepting_proposals(factory: Factory) -> None:
    store = factory()
    book = DeviceBook(store.domain())
    seen = Sighting(
        "S-1",
        "0781",
        "5567",
        "SanDisk",
        "Cruzer",
        "2026-11-02T09:00:00.000000Z",
        "2026-11-18T10:00:00.000000Z",
        {"alice": "2026-11-18T10:00:00.000000Z", "bob": "2026-11-01T10:00:00.000000Z"},
        {"ws-1": "2026-11-18T10:00:00.000000Z"},
        3000,
        3,
        1,
    )
    old = Sighting(
        "S-2",
        first_seen="2026-10-01T09:00:00.000000Z",
        last_seen="2026-10-01T09:00:00.000000Z",
        users={"carol": "2026-10-01T09:00:00.000000Z"},
    )
    assert book.save_sightings([seen, old]) == 2
    assert [s.as_dict() for s in book.sightings()] == [seen.as_dict(), old.as_dict()]
    recent = book.sightings(since="2026-11-11T00:00:00.000000Z")
    assert [s.serial for s in recent] == ["S-1"]
    proposals = learn(recent, since="2026-11-11T00:00:00.000000Z")
    assert [(p.serial, p.scope, p.subject) for p in proposals] == [("S-1", "user", "alice")]
    assert book.propose(proposals) == 1
    assert book.approvals() == []  # nothing takes effect before review
    accepted = book.decide(None, accept=True, by="carol", note="reviewed")
    assert [(c.action, c.serial, c.subject) for c in accepted] == [("accept", "S-1", "alice")]
    assert [(a.serial, a.scope, a.subject) for a in book.approvals()] == [("S-1", "user", "alice")]
    assert book.proposals() == []
    with pytest.raises(NoSuchApproval):
        book.decide(["S-1"], accept=False, by="carol", note="again")
    store.close()
    readonly = factory(readonly=True)  # the admin CLI's view
    try:
        assert [s.serial for s in DeviceBook(readonly.domain()).sightings()] == ["S-1", "S-2"]
        with pytest.raises(StoreError):
            DeviceBook(readonly.domain()).approve("S-3", by="carol", note="read-only")
    finally:
        readonly.close()


def test_baselines_survive_a_restart(factory: Factory) -> None:
    store = factory()
    assert BaselineBook(store.domain()).load() == {}
    behaviour = Behaviour()
    for day in range(12):
        when = 1_794_700_000.0 + day * 86_400
        behaviour.enrich({"@timestamp": "", "event.action": "file.open", "user.name": "alice"}, when)
    assert BaselineBook(store.domain()).save(behaviour.snapshot()) == 1
    store.close()
    reopened = factory()
    try:
        restored = Behaviour()
        assert restored.restore(BaselineBook(reopened.domain()).load()) == 1
        assert restored.baselines.users["alice"].active_days == 12
    finally:
        reopened.close()


def test_a_store_never_written_reads_as_empty(factory: Factory) -> None:
    factory().close()
    readonly = factory(readonly=True)
    try:
        book = DeviceBook(readonly.domain())
        assert (book.sightings(), book.approvals(), book.proposals(), book.history()) == ([], [], [], [])
        assert BaselineBook(readonly.domain()).load() == {}
    finally:
        readonly.close()
