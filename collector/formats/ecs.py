"""Elastic Common Schema documents of alerts and events, nested as Elasticsearch indexes them.

Where the SPEC's names are not ECS, they are moved:

- `device.*` (the removable device) -> `volume.*`: in ECS `device.*` describes the host device
  and `device.model` is an object, so loading ours there clashes with the ECS mapping;
- the mount -> `volume.mount_name`, `volume.file_system_type`, `volume.writable`;
- an alert's `policy.*` -> `rule.*`, `severity` -> `event.severity` (a number, as Elastic
  Security's risk levels: 21, 47, 73, 99), `summary` -> `message`, `id` -> `event.id`;
- every other field ECS does not define stays under `exfilguard.*` (custom fields go in a
  namespace of their own, as ECS asks).

Every event gets `event.kind`, `event.category` and `event.type` from its action (ACTIONS),
with the categories' expected types (checked against ECS's ecs_flat.yml in the tests).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from collector import __version__

ECS_VERSION = "9.0.0"  # fields used exist since 8.x; tests check them against 9.x definitions

# action -> (event.kind, event.category, event.type)
ACTIONS: dict[str, tuple[str, list[str], list[str]]] = {
    "file.open": ("event", ["file"], ["access"]),
    "file.read": ("event", ["file"], ["access"]),
    "file.mass_read": ("event", ["file"], ["access"]),
    "file.modify": ("event", ["file"], ["change"]),
    "file.create": ("event", ["file"], ["creation"]),
    "file.delete": ("event", ["file"], ["deletion"]),
    "file.rename": ("event", ["file"], ["change"]),
    "file.write": ("event", ["file"], ["creation"]),
    "file.copy": ("event", ["file"], ["creation"]),
    "file.archive": ("event", ["file"], ["creation"]),
    "device.write": ("event", ["file"], ["creation"]),
    "device.attach": ("event", ["host"], ["change"]),
    "device.detach": ("event", ["host"], ["change"]),
    "device.mount": ("event", ["host"], ["change"]),
    "device.unmount": ("event", ["host"], ["change"]),
    "agent.start": ("event", ["process"], ["start"]),
    "agent.stop": ("event", ["process"], ["end"]),
    "agent.heartbeat": ("metric", ["host"], ["info"]),
    "agent.gap": ("event", ["host"], ["info"]),
    "agent.config": ("event", ["configuration"], ["change"]),
    "agent.inventory": ("state", ["file"], ["info"]),
    "agent.silent": ("event", ["host"], ["info"]),
}
_OTHER = ("event", ["host"], ["info"])
SHAPED_BY = ("event.action",)  # the values `event` branches on (formats/layout.py)

# Elastic Security's default severity -> risk score bands.
SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}

# SPEC name -> ECS name, for fields both describe.
RENAMED = {
    "device.name": "volume.device_name",
    "device.serial": "volume.serial_number",
    "device.vendor": "volume.vendor_name",
    "device.model": "volume.product_name",
    "device.vendor_id": "volume.vendor_id",
    "device.product_id": "volume.product_id",
    "device.bus": "volume.bus_type",
    "device.size": "volume.size",
    "device.removable": "volume.removable",
    "device.type": "volume.device_type",
    "exfilguard.mount.point": "volume.mount_name",
    "exfilguard.mount.fs_type": "volume.file_system_type",
}
# Fields whose SPEC names are ECS names already (prefixes end in a dot).
_ECS_NAMES = frozenset(
    {
        "@timestamp",
        "tags",
        "agent.id",
        "agent.version",
        "host.name",
        "host.id",
        "user.id",
        "user.name",
        "process.pid",
        "process.executable",
        "process.command_line",
        "process.name",
        "process.parent.pid",
        "file.path",
        "file.size",
        "file.name",
        "file.extension",
        "file.type",
        "file.hash.sha256",
        "event.id",
        "event.action",
        "event.sequence",
        "event.reason",
        "event.start",
        "event.end",
        "volume.writable",  # from exfilguard.mount.read_only, negated
    }
)
_ATTACK = re.compile(r"^T\d{4}(?:\.\d{3})?$")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}} ("@timestamp" stays whole)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = [_nest(v) for v in value]  # noqa: PLW2901 - repeated messages nest too
        parts = _PARTS.get(key)
        if parts is None:
            parts = _PARTS[key] = tuple(key.split("."))
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


# Forwarding maps every stored event: where each SPEC name goes, and its dotted parts, are
# decided once per name (the names come from the .proto, so these stay small).
_PARTS: dict[str, tuple[str, ...]] = {}
_TARGETS: dict[str, str] = {}


def _target(key: str) -> str:
    target = _TARGETS.get(key)
    if target is None:
        if key in RENAMED:
            target = RENAMED[key]
        elif key in _ECS_NAMES or key.startswith("exfilguard."):
            target = key
        else:  # a SPEC name ECS defines differently (device.approved, file.target_path, ...)
            target = f"exfilguard.{key}"
        if len(_TARGETS) < 10_000:  # alert measures are named by policies: keep the cache bounded
            _TARGETS[key] = target
    return target


def _fields(source: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The flat ECS fields of a SPEC mapping: ECS names kept, known ones renamed, the rest custom."""
    out: dict[str, Any] = {}
    for key, value in source.items():
        if key in skip or value is None or value in ("", []):
            continue
        if key == "exfilguard.mount.read_only":
            out["volume.writable"] = not value
        else:
            out[_target(key)] = value
    return out


def _categorise(out: dict[str, Any], action: str, kind: str | None = None) -> None:
    default_kind, category, types = ACTIONS.get(action, _OTHER)
    out["event.kind"] = kind or default_kind
    out["event.category"] = list(category)
    out["event.type"] = list(types)


def event(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """One stored event as an ECS document.

    Forwarding maps every stored event, so this builds the nested document in one pass over the
    mapping, each name's place decided once (_place); alerts take the plainer road below.
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if value is None or value in ("", []) or key == "event.kind":
            continue
        if key == "exfilguard.mount.read_only":
            key, value = "volume.writable", not value  # noqa: PLW2901 - the one negated field
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            value = [_nest(v) for v in value]  # noqa: PLW2901 - repeated messages nest too
        parts = _PLACES.get(key)
        if parts is None:
            parts = _PLACES[key] = tuple(_target(key).split("."))
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    kind, category, types = ACTIONS.get(str(mapping.get("event.action", "")), _OTHER)
    info = out.get("event")
    if info is None:
        info = out["event"] = {}
    info.update(
        kind=kind, category=list(category), type=list(types), module="exfilguard", dataset="exfilguard.events"
    )
    agent = out.get("agent")
    if agent is None:
        agent = out["agent"] = {}
    agent["type"] = "exfilguard"
    out["ecs"] = {"version": ECS_VERSION}
    return out


# Where each name of a stored event goes, as dotted parts (names come from the .proto: few).
_PLACES: dict[str, tuple[str, ...]] = {}


def alert(body: Mapping[str, Any]) -> dict[str, Any]:
    """One alert (the SPEC §10 object) as an ECS alert document."""
    policy = {k: body[k] for k in body if k.startswith("policy.")}
    moved = frozenset({"id", "severity", "summary", "count", "evidence", "event.kind", "status", *policy})
    out = _fields(body, moved)
    _categorise(out, str(body.get("event.action", "")), "alert")
    severity = str(body.get("severity", "low"))
    out["event.id"] = str(body.get("id", ""))
    out["event.severity"] = SEVERITY.get(severity, SEVERITY["low"])
    out["event.module"] = "exfilguard"
    out["event.dataset"] = "exfilguard.alerts"
    out["message"] = str(body.get("summary", ""))
    out["rule.id"] = str(body.get("policy.id", ""))
    out["rule.name"] = str(body.get("policy.title", ""))
    if body.get("policy.description"):
        out["rule.description"] = str(body["policy.description"])
    out["rule.ruleset"] = "exfilguard"
    out["rule.version"] = str(body.get("policy.set_hash", "")) or __version__
    tags = [str(t) for t in body.get("policy.tags") or []]
    if tags:
        out["exfilguard.policy.tags"] = tags
    techniques = [t for t in tags if _ATTACK.match(t)]
    if techniques:
        out["threat.framework"] = "MITRE ATT&CK"
        out["threat.technique.id"] = techniques
    out["exfilguard.alert.severity"] = severity
    for key in ("count", "evidence", "status"):
        if body.get(key) not in (None, "", []):
            out[f"exfilguard.alert.{key}"] = body[key]
    out["agent.type"] = "exfilguard"
    out["ecs.version"] = ECS_VERSION
    return _nest(out)
