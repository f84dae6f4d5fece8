"""The protobuf -> dotted ECS mapping that policies, alerts and exports all read."""

from __future__ import annotations

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
