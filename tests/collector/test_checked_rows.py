"""The rows the ingest check builds are the store's own rows (each field of an event read once)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.store.rows import CheckedBatch, event_row
from collector.store.sqlite import SqliteStore
from collector.wirecheck import Refusal, checked_batch
from protos import exfilguard_pb2 as pb
from tests.eventcorpus import corpus
from tests.helpers import make_events


def _acceptable(agent_id: str) -> list[pb.Event]:
    """Corpus events (every field, every odd value) made acceptable at the door, sequences 1.."""
    events = []
    for sequence, event in enumerate(corpus(300, seed=11), 1):
        event.agent.id = agent_id
        event.event.sequence = sequence
        event.event.id = f"{agent_id}-{sequence}"
        event.event.action = event.event.action if event.event.action.isprintable() else "file.read"
        event.event.action = event.event.action[:128] or "file.read"
        event.timestamp.seconds, event.timestamp.nanos = 1_767_225_600 + sequence, sequence * 1000
        for name in ("gap", "late_window"):
            event.exfilguard.ClearField(name)  # their timestamps may be out of range
        events.append(event)
    return events


def test_checked_rows_equal_the_store_rows_of_every_corpus_event() -> None:
    events = _acceptable("agent-1")
    checked = checked_batch("agent-1", events)
    assert isinstance(checked, CheckedBatch)
    assert list(checked) == events and len(checked) == len(events) and checked[3] is events[3]
    assert checked.rows == [event_row("agent-1", e) for e in events]


def test_a_bad_event_is_refused_by_sequence_and_no_rows_are_handed_on() -> None:
    events = _acceptable("agent-1")[:10]
    events[6].event.id = ""
    refusal = checked_batch("agent-1", events)
    assert isinstance(refusal, Refusal)
    assert refusal.sequence == 7


def test_a_checked_batch_stores_the_same_table_as_its_events(tmp_path: Path) -> None:
    events = make_events("agent-1", 1, 50)
    checked = checked_batch("agent-1", events)
    assert isinstance(checked, CheckedBatch)
    tables = []
    for name, batch in (("plain", list(events)), ("checked", checked)):
        store = SqliteStore(tmp_path / f"{name}.db")
        result = store.ingest_batches([("agent-1", batch)])[0]
        assert result.watermark == 50 and result.stored == list(events)
        store.close()
        with sqlite3.connect(tmp_path / f"{name}.db") as db:
            tables.append(db.execute("SELECT * FROM events ORDER BY sequence").fetchall())
    assert tables[0] == tables[1] and len(tables[0]) == 50
