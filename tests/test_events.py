"""The protobuf -> dotted ECS mapping that policies, alerts and exports all read."""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from protos import events
from protos import exfilguard_pb2 as pb


def test_mapping_uses_ecs_dotted_names() -> None:
    event = events.new_event(
        "file.copy",
        file=pb.File(path="/media/stick/holiday.jpg", size=4096, hash=pb.Hash(sha256="ab" * 32)),
        process=pb.Process(pid=42, executable="/usr/bin/cp", parent=pb.ParentProcess(pid=1)),
        tags=["database"],
        exfilguard=pb.Extensions(attribution="exact", source=pb.Source(path="/srv/db/customers.sqlite"),
                                 copy=pb.Copy(method=["fingerprint"])),
    )
    event.event.sequence = 7
    m = events.to_mapping(event)
    assert m["event.action"] == "file.copy"
    assert m["event.sequence"] == 7
    assert m["@timestamp"].endswith("Z") and len(m["@timestamp"]) == 27
    assert m["file.path"] == "/media/stick/holiday.jpg"
    assert m["file.size"] == 4096
    assert m["file.hash.sha256"] == "ab" * 32
    assert m["process.parent.pid"] == 1
    assert m["tags"] == ["database"]
    assert m["exfilguard.source.path"] == "/srv/db/customers.sqlite"
    assert m["exfilguard.copy.method"] == ["fingerprint"]
    assert "device.serial" not in m  # unset fields are absent, not empty


def test_zero_size_is_present_when_set() -> None:
    m = events.to_mapping(events.new_event("file.write", file=pb.File(path="/m/empty", size=0)))
    assert m["file.size"] == 0


def test_copy_identification_fields_map_to_dotted_names() -> None:
    copy = pb.Copy(identified_by="member", confidence=0.95, share=1.0, members_total=3,
                   sources=["/srv/db/a.csv"],
                   members=[pb.Member(name="db/a.csv", source="/srv/db/a.csv", identified_by="exact",
                                      share=1.0, size=10)])
    event = events.new_event("file.copy", exfilguard=pb.Extensions(
        copy=copy, content=pb.Content(entropy=7.99, format="tar.gz")))
    m = events.to_mapping(event)
    assert m["exfilguard.copy.identified_by"] == "member"
    assert m["exfilguard.copy.confidence"] == 0.95
    assert m["exfilguard.copy.share"] == 1.0
    assert m["exfilguard.copy.members_total"] == 3
    assert m["exfilguard.copy.sources"] == ["/srv/db/a.csv"]
    assert m["exfilguard.copy.members"] == [
        {"name": "db/a.csv", "source": "/srv/db/a.csv", "identified_by": "exact", "share": 1.0, "size": 10}]
    assert m["exfilguard.content.format"] == "tar.gz"
    assert m["exfilguard.content.entropy"] == 7.99


def _fill(message: Any) -> None:
    """Set every field of `message` (and its sub-messages) to a non-default value."""
    values = {FieldDescriptor.CPPTYPE_STRING: "x", FieldDescriptor.CPPTYPE_BOOL: True}
    for field in message.DESCRIPTOR.fields:
        target = getattr(message, field.name)
        if events.is_timestamp(field):
            (target.add() if field.is_repeated else target).FromSeconds(1_700_000_000)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(target.add() if field.is_repeated else target)
        else:
            value = values.get(field.cpp_type, 1)
            if field.enum_type is not None:
                value = field.enum_type.values[-1].number
            if field.is_repeated:
                target.append(value)
            else:
                setattr(message, field.name, value)


def test_the_model_walker_names_every_field_as_to_mapping_does() -> None:
    # One walker of the .proto (policy fields, export columns): its names are to_mapping's keys.
    event = pb.Event()
    _fill(event)
    leaves = {f.name: f for f in events.model_fields() if f.kind != "message"}
    mapping = events.to_mapping(event)
    assert set(mapping) == set(leaves)
    assert leaves["@timestamp"].kind == "timestamp" and "timestamp" not in leaves
    for name, value in mapping.items():
        assert isinstance(value, list) == leaves[name].repeated, name
        if leaves[name].kind == "messages":  # a list of flat dicts, named by the same rule
            assert all(isinstance(item, dict) for item in value), name


def test_event_ids_are_distinct_version_4_uuids_and_times_are_microseconds() -> None:
    before = time.time()
    made = [events.new_event("file.open") for _ in range(1000)]  # several pools of random bytes
    after = time.time()
    ids = [e.event.id for e in made]
    assert len(set(ids)) == len(ids)
    for text in ids[:300]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    for event in made[:10]:
        assert event.timestamp.nanos % 1000 == 0
        assert before - 1e-6 <= event.timestamp.seconds + event.timestamp.nanos / 1e9 <= after


def test_a_sibling_event_is_the_same_access_under_its_own_id_and_action() -> None:
    opened = events.new_event("file.open", tags=["database"], file=pb.File(path="/srv/db/a.csv", size=3))
    opened.process.pid = 42
    read = events.sibling_event(opened, "file.read")
    assert read.event.action == "file.read" and opened.event.action == "file.open"
    assert read.event.id != opened.event.id and uuid.UUID(read.event.id).version == 4
    mapped, original = events.to_mapping(read), events.to_mapping(opened)
    for key in ("event.id", "event.action"):
        del mapped[key], original[key]
    assert mapped == original


def test_view_reads_what_to_mapping_holds_for_every_field_of_the_corpus() -> None:
    from collector.policy.engine import event_time
    from collector.policy.fields import FIELDS
    from tests.eventcorpus import corpus

    names = [*FIELDS, "exfilguard.invalid", "no.such.field", "file"]
    for event in corpus(600):
        full = events.to_mapping(event)
        view = events.EventView(event)
        for name in names:
            assert view.get(name, "default") == full.get(name, "default"), name
            assert (name in view) == (name in full), name
        assert dict(events.EventView(event)) == full
        assert len(view) == len(full)
        assert view.epoch() == event_time(full)  # the engine's clock, read off the protobuf


def test_the_events_straight_line_mapping_is_the_walks_in_its_order() -> None:
    from tests.eventcorpus import corpus

    for event in corpus(1500):
        fast, walked = events.to_mapping(event), events.walk_mapping(event)
        assert list(fast.items()) == list(walked.items())
    bad = events.new_event("file.read", file=pb.File(path="/m/a"))
    bad.timestamp.nanos = -1  # no ISO time: described, as the walk describes it
    assert list(events.to_mapping(bad).items()) == list(events.walk_mapping(bad).items())
    assert events.INVALID in events.to_mapping(bad)
    inner = events.new_event("agent.gap", file=pb.File(path="/m/a"))  # in a message read through ListFields
    inner.exfilguard.gap.first.nanos = -1
    inner.exfilguard.attribution = "exact"
    assert list(events.to_mapping(inner).items()) == list(events.walk_mapping(inner).items())
    described = events.to_mapping(inner)[events.INVALID]
    assert [text.split(":")[0] for text in described] == ["exfilguard.gap.first"]


def test_view_reads_only_what_is_asked_and_keeps_added_fields_apart() -> None:
    event = events.new_event("file.write", file=pb.File(path="/m/a", size=0), user=pb.User(name="bob"))
    view = events.EventView(event)
    assert view["file.size"] == 0 and view.get("device.serial") is None
    assert "device.serial" not in view and view.get("device.serial", "") == ""
    twin = view.with_fields({"exfilguard.risk.score": 3.0})
    assert twin["exfilguard.risk.score"] == 3.0 and "exfilguard.risk.score" not in view
    twin["device.approved"] = False
    assert dict(twin) == {**events.to_mapping(event), "exfilguard.risk.score": 3.0, "device.approved": False}
    assert "exfilguard.risk.score" not in events.to_mapping(twin.event)  # the event is not changed
    from collector.policy import engine

    assert view.epoch() == engine.event_time(events.to_mapping(event))
