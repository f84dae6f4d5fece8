"""Prevention exceptions officers grant: recorded, listed, revoked; one contract on SQLite and a real
PostgreSQL (the same SQL on both, collector/store/sql.py)."""

from __future__ import annotations

import pytest

from collector.store import Store, StoreError
from collector.store.grants import GrantRecord
from tests.collector.test_store import Factory, factory, store

__all__ = ["factory", "store"]  # the contract's fixtures: every test here runs on both stores


def _grant(grant_id: str, host: str = "WS-17", user: str = "alice",
           until: str = "2026-12-02T14:00:00.000000Z",
           granted_at: str = "2026-12-02T12:00:00.000000Z") -> GrantRecord:
    return GrantRecord(grant_id, host, user, "SER-1", "carol", "INC-4711 imaging", granted_at, until,
                       signature="c2ln")


def test_grants_are_recorded_listed_by_host_and_activity_and_revoked_once(store: Store) -> None:
    assert store.grants() == []
    store.add_grant(_grant("G-1"))
    store.add_grant(_grant("G-2", host="ws-18", granted_at="2026-12-02T12:01:00.000000Z"))
    store.add_grant(_grant("G-3", until="2026-12-02T12:30:00.000000Z",
                           granted_at="2026-12-02T12:02:00.000000Z"))
    assert [g.id for g in store.grants()] == ["G-1", "G-2", "G-3"]
    first = store.grants()[0]
    assert (first.host, first.user, first.device, first.granted_by, first.note, first.signature) == (
        "ws-17", "alice", "SER-1", "carol", "INC-4711 imaging", "c2ln")  # host kept lower case
    assert [g.id for g in store.grants(host="Ws-17")] == ["G-1", "G-3"]
    # G-3 expired at 12:30: not active at 13:00
    assert [g.id for g in store.grants(host="ws-17", active_at="2026-12-02T13:00:00.000000Z")] == ["G-1"]
    revoked = store.revoke_grant("G-1", "2026-12-02T13:05:00.000000Z", "dave")
    assert revoked is not None and revoked.revoked_at == "2026-12-02T13:05:00.000000Z"
    assert revoked.revoked_by == "dave"
    # the first revocation stays
    assert store.revoke_grant("G-1", "2026-12-02T13:06:00.000000Z", "erin") is None
    assert store.revoke_grant("G-404", "2026-12-02T13:06:00.000000Z") is None
    assert store.grants(host="ws-17", active_at="2026-12-02T13:10:00.000000Z") == []
    assert [g.revoked_at for g in store.grants(host="ws-17")] == ["2026-12-02T13:05:00.000000Z", ""]
    assert [g.revoked_by for g in store.grants(host="ws-17")] == ["dave", ""]
    assert not revoked.active("2026-12-02T13:00:00.000000Z")


def test_a_grant_id_is_recorded_once_and_a_readonly_store_records_nothing(factory: Factory) -> None:
    store = factory()
    try:
        store.add_grant(_grant("G-1"))
        with pytest.raises(StoreError):
            store.add_grant(_grant("G-1", user="mallory"))
        assert [g.user for g in store.grants()] == ["alice"]
    finally:
        store.close()
    reader = factory(readonly=True)
    try:
        assert [g.id for g in reader.grants(active_at="2026-12-02T13:00:00.000000Z")] == ["G-1"]
        with pytest.raises(StoreError):
            reader.add_grant(_grant("G-2"))
        with pytest.raises(StoreError):
            reader.revoke_grant("G-1", "2026-12-02T13:00:00.000000Z")
    finally:
        reader.close()
