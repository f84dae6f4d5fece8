"""The rows the ingest check builds are the store's own rows (each field of an event read once)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.store.rows import DATA_COLUMN, CheckedBatch, event_row
from collector.store.sqlite import SqliteStore
from collector.wirecheck import Malformed, Refusal, WireBatch, checked_batch, event_bytes, parse_agent_message
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


def _batch(events: list[pb.Event]) -> bytes:
    return pb.AgentMessage(batch=pb.EventBatch(events=events)).SerializeToString()


def test_the_rows_keep_each_events_bytes_as_sent_and_an_odd_layout_is_serialised_again() -> None:
    # the corpus's texts with NUL are refused by the deserializer already
    corpus_events = _acceptable("agent-1")
    events = [e for e in corpus_events if not isinstance(parse_agent_message(_batch([e])), Malformed)]
    assert len(events) > 60
    events = events[:60]
    events[1].process.command_line = "x" * 20_000  # a length of three varint bytes
    raw = _batch(events)
    received = parse_agent_message(raw)
    assert isinstance(received, WireBatch)
    assert received.data == [e.SerializeToString() for e in events]
    checked = checked_batch("agent-1", received.message.batch.events, data=received.data)
    assert isinstance(checked, CheckedBatch)
    assert [row[DATA_COLUMN] for row in checked.rows] == received.data
    assert [pb.Event.FromString(row[DATA_COLUMN]) for row in checked.rows] == events
    # Sent in two parts, which protobuf merges into one batch: both parsings merge them.
    merged = parse_agent_message(_batch(events[:20]) + _batch(events[20:]))
    assert isinstance(merged, WireBatch) and list(merged.message.batch.events) == events
    assert merged.data == received.data
    checked = checked_batch("agent-1", merged.message.batch.events, data=merged.data)
    assert isinstance(checked, CheckedBatch) and checked.rows == [event_row("agent-1", e) for e in events]
    # A heartbeat between two parts clears the first (one body at a time): only the second's events
    # are the message's, and the bytes of the first are not handed on as theirs.
    beat = pb.AgentMessage(heartbeat=pb.Heartbeat(backlog=1)).SerializeToString()
    cleared = parse_agent_message(_batch(events[:20]) + beat + _batch(events[20:]))
    assert isinstance(cleared, WireBatch) and list(cleared.message.batch.events) == events[20:]
    assert cleared.data is None
    checked = checked_batch("agent-1", cleared.message.batch.events, data=cleared.data)
    assert isinstance(checked, CheckedBatch)
    assert checked.rows == [event_row("agent-1", e) for e in events[20:]]
    tiny = pb.Event(event=pb.EventInfo(id="x", action="a", sequence=1))  # under 128 bytes: one length byte
    pair = [tiny.SerializeToString(), events[1].SerializeToString()]
    assert event_bytes(_batch([tiny, events[1]]), 2) == pair
    assert event_bytes(raw, len(events) - 1) is None  # not the events the message parsed to
    assert event_bytes(raw[:-1], len(events)) is None  # cut short
    assert event_bytes(raw + b"\x12\x02\x0a\x00", len(events) + 1) == [*received.data, b""]  # an empty event
    hello = pb.AgentMessage(hello=pb.Hello(agent_id="a")).SerializeToString()
    assert isinstance(parse_agent_message(hello), pb.AgentMessage)
