"""The alert outbox (collector/store/outbox.py): deliveries owed with the alert's own commit, read back
oldest first per sink, forgotten once settled; one contract on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collector.store import Store
from tests.collector.test_store import Factory, _alert, factory, store

__all__ = ["factory", "store"]  # the contract's fixtures: every test here runs on both stores


def test_an_alert_is_owed_to_its_sinks_until_each_delivery_is_settled(store: Store) -> None:
    store.add_alert(_alert("al-2", 2), ["webhook:a", "jsonl:b"])
    store.add_alert(_alert("al-1", 1), ["webhook:a"])
    store.add_alert(_alert("al-3", 3))  # no sink takes it
    store.add_alert(_alert("al-1", 1, count=2), ["webhook:a"])  # a body update: still owed once
    owed = store.owed(["webhook:a", "jsonl:b"])
    assert [(key, a["id"]) for key, a in owed] == [("webhook:a", "al-1"), ("jsonl:b", "al-2"),
                                                    ("webhook:a", "al-2")]  # fmt: skip
    assert owed[0][1]["count"] == 2  # the stored body, as the sinks get it
    assert [a["id"] for _, a in store.owed(["jsonl:b"])] == ["al-2"]
    assert store.owed(["email:c"]) == [] and store.owed([]) == []
    assert len(store.owed(["webhook:a", "jsonl:b"], limit=1)) == 1
    store.settle([("webhook:a", "al-1"), ("webhook:a", "al-2"), ("webhook:a", "al-9")])
    assert [(key, a["id"]) for key, a in store.owed(["webhook:a", "jsonl:b"])] == [("jsonl:b", "al-2")]


def test_what_is_owed_survives_a_reopened_store(factory: Factory) -> None:
    store = factory()
    store.add_alert(_alert("al-1", 1), ["stdout:x"])
    store.close()
    reopened = factory()
    assert [a["id"] for _, a in reopened.owed(["stdout:x"])] == ["al-1"]
    reopened.close()
