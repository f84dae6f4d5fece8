"""An alert: one JSON object in the SPEC §10 shape — who, what, where to, how, when, why — as dotted ECS
names (`build`). The store, the sinks, the CLI and the console all get this object and call it `alert`;
`RaisedAlert` is what the policy engine hands on: the alert and how suppression keys it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.ecstime import ecs_now

SEVERITY_ORDER = {"low": 1, "medium": 2, "high": 3, "critical": 4}

# Fields copied from the event that fired the policy, when present: who, what, where to, how.
EVENT_FIELDS = (
    "host.name",
    "user.name",
    "user.id",
    "agent.id",
    "exfilguard.login_user.name",
    "file.path",
    "file.size",
    "file.hash.sha256",
    "tags",
    "exfilguard.source.path",
    "exfilguard.source.tags",
    "exfilguard.copy.method",
    "exfilguard.copy.identified_by",
    "exfilguard.copy.confidence",
    "exfilguard.copy.share",
    "exfilguard.copy.sources",
    "exfilguard.copy.members_total",
    "exfilguard.copy.files_read",
    "exfilguard.copy.bytes_read",
    "exfilguard.copy.bytes_written",
    "exfilguard.copy.revises",
    "exfilguard.late",
    "exfilguard.late_window.start",
    "exfilguard.late_window.end",
    "exfilguard.content.format",
    "exfilguard.content.entropy",
    "device.serial",
    "device.vendor",
    "device.model",
    "device.bus",
    "device.name",
    "exfilguard.mount.point",
    "process.pid",
    "process.executable",
    "process.command_line",
    "process.name",
    "exfilguard.attribution",
    "exfilguard.gap.lost",
    "exfilguard.gap.reason",
    "event.action",
    "event.reason",
)


@dataclass
class RaisedAlert:
    """An alert the engine raised: `alert` is the JSON object the sinks and the store get; `group`
    keys its suppression."""

    alert: dict[str, Any]
    group: tuple[Any, ...] = ()
    suppress_seconds: float | None = None
    time: float = 0.0  # event time (epoch seconds) of the firing event: suppression runs on event time
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The alert's unique id."""
        return str(self.alert["id"])

    @property
    def policy_id(self) -> str:
        """The id of the policy that raised it."""
        return str(self.alert["policy.id"])

    @property
    def severity(self) -> str:
        """low, medium, high or critical."""
        return str(self.alert["severity"])

    def to_json(self) -> dict[str, Any]:
        """The alert (a copy) in the SPEC §10 shape."""
        return dict(self.alert)


def build(
    *,
    policy_id: str,
    title: str,
    severity: str,
    description: str,
    tags: tuple[str, ...],
    summary: str,
    set_hash: str,
    event: Mapping[str, Any],
    count: int,
    evidence: list[str],
    measures: Mapping[str, Any],
    first: str | None,
    last: str | None,
) -> dict[str, Any]:
    """The alert JSON object: identity, policy, the officer's summary, the event's fields, measures."""
    out: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "@timestamp": ecs_now(),
        "event.kind": "alert",
        "policy.id": policy_id,
        "policy.title": title,
        "policy.description": description,
        "policy.tags": list(tags),
        "policy.set_hash": set_hash,
        "severity": severity,
        "summary": summary,
        "count": count,
        "evidence": evidence,
        "event.start": first,
        "event.end": last,
    }
    for name in EVENT_FIELDS:
        if name in event and event[name] not in ("", [], None):
            out[name] = event[name]
    for name in ("host.name", "user.name", "agent.id"):
        out.setdefault(name, "")
    for name, value in measures.items():
        out[f"exfilguard.alert.{name}"] = value
    return out
