"""Events and alerts as the collector stores them: protobuf events through protos.events.to_mapping."""

from __future__ import annotations

from typing import Any

from collector.alerts.alert import build
from protos import exfilguard_pb2 as pb
from protos.events import new_event, to_mapping

STICK = pb.Device(
    name="/dev/sdb1",
    serial="4C530001230",
    vendor="SanDisk",
    model="Cruzer Blade",
    vendor_id="0781",
    product_id="5567",
    bus="usb",
    size=16_000_000_000,
    removable=True,
    type="partition",
    parent="/dev/sdb",
)
PROCESS = pb.Process(pid=4242, executable="/usr/bin/cp", command_line="cp customers.db /media/a/S", name="cp")


def _event(action: str, **fields: Any) -> dict[str, Any]:
    event = new_event(action, **fields)
    event.agent.id = "agent-1"
    event.agent.version = "0.1.0"
    event.event.sequence = 7
    event.host.id = "0123456789abcdef"
    event.user.id = "1000"
    event.user.name = "alice"
    return to_mapping(event)


def events() -> dict[str, dict[str, Any]]:
    """One mapping of each kind of action the agent sends, with every field it can carry."""
    copy = pb.Extensions(
        attribution="exact",
        login_user=pb.LoginUser(id="1000", name="alice"),
        mount=pb.Mount(
            point="/media/alice/STICK", fs_type="vfat", label="STICK", uuid="AB-CD", read_only=False
        ),
        source=pb.Source(path="/srv/db/customers.db", tags=["database"], sha256="ab" * 32),
        copy=pb.Copy(
            method=["process", "fingerprint"],
            identified_by="fingerprint",
            confidence=0.99,
            share=1.0,
            sources=["/srv/db/customers.db"],
            members=[pb.Member(name="customers.db", source="/srv/db/customers.db", identified_by="exact")],
        ),
        content=pb.Content(entropy=4.5, format="sqlite"),
    )
    written = pb.File(
        path="/media/alice/STICK/c.db",
        size=52_428_800,
        name="c.db",
        extension="db",
        hash=pb.Hash(sha256="ab" * 32),
        type="file",
    )
    return {
        "file.copy": _event(
            "file.copy", file=written, device=STICK, process=PROCESS, exfilguard=copy, tags=["database"]
        ),
        "file.open": _event(
            "file.open", file=pb.File(path="/srv/db/customers.db"), process=PROCESS, tags=["database"]
        ),
        "file.rename": _event("file.rename", file=pb.File(path="/srv/db/a", target_path="/srv/db/b")),
        "device.attach": _event("device.attach", device=STICK),
        "device.mount": _event(
            "device.mount",
            device=STICK,
            exfilguard=pb.Extensions(mount=pb.Mount(point="/media/s", read_only=True)),
        ),
        "agent.gap": _event("agent.gap", exfilguard=pb.Extensions(gap=pb.Gap(lost=12, reason="spool_full"))),
        "agent.heartbeat": _event("agent.heartbeat"),
        "agent.inventory": _event(
            "agent.inventory",
            exfilguard=pb.Extensions(inventory=[pb.TagInventory(tag="database", files=3, bytes=1000)]),
        ),
    }


def alert(repeat_of: str = "") -> dict[str, Any]:
    """An alert raised on the file.copy event, as the policy engine builds it."""
    body = build(
        policy_id="usb-copy-database",
        title="Database copied to removable media",
        severity="critical",
        description="A file tagged database was written to a removable device.",
        tags=("T1052.001", "exfiltration"),
        summary="alice copied /srv/db/customers.db to SanDisk Cruzer Blade 4C530001230",
        set_hash="cd" * 32,
        event=events()["file.copy"],
        count=1,
        evidence=["ev-1", "ev-2"],
        measures={"bytes": 52_428_800},
        first="2026-11-18T10:00:00.000000Z",
        last="2026-11-18T10:00:05.000000Z",
    )
    body["exfilguard.risk.score"] = 35.0
    if repeat_of:
        body["exfilguard.alert.repeat_of"] = repeat_of
        body["exfilguard.alert.repeats"] = 3
    return body
