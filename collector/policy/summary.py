"""Alert summary templates: `{user.name} copied {count} files ({bytes}) to {device.serial}`.

Placeholders are event fields (from the event that fired the policy) or the measures below.
A placeholder with no value renders as `?`, so a summary never fails at alert time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

# Measures an alert knows besides the event's fields.
MEASURES = {
    "count": "events (or files) the alert covers",
    "distinct": "distinct values counted by a distinct measure",
    "bytes": "bytes summed by a sum measure or copied under coverage, human-readable",
    "coverage": "share of the tag's collection copied, e.g. 85%",
    "tag": "the tag a coverage alert is about",
    "inventory_files": "files the agent counted under the tag",
    "window": "the aggregate window or sequence span, e.g. 10m",
    "local_time": "local time of the event in the collector's timezone",
    "steps": "names of the sequence steps seen, in order",
    "destination": "where a write went: a device (vendor, model, serial), a network share or a phone (MTP)",
}

_EGRESS_KINDS = {"network": "network share", "mtp": "phone (MTP)"}


def destination(event: Mapping[str, Any]) -> str:
    """The removable medium an event names, in words: `usb Kingston DataTraveler serial EG0001`,
    `network share server:/export (nfs4)`; "" when it names none."""
    bus = str(event.get("device.bus") or "")
    if bus in _EGRESS_KINDS:
        source = event.get("exfilguard.mount.source") or event.get("device.name") or "?"
        fs_type = event.get("exfilguard.mount.fs_type") or event.get("device.type") or "?"
        return f"{_EGRESS_KINDS[bus]} {source} ({fs_type})"
    words = [str(event.get(name) or "") for name in ("device.vendor", "device.model")]
    serial = str(event.get("device.serial") or "")
    if not (any(words) or serial or event.get("device.name")):
        return ""
    named = " ".join(w for w in (bus, *words) if w) or str(event.get("device.name"))
    return f"{named} serial {serial or '?'}"


def placeholders(template: str) -> list[str]:
    """Every `{name}` in a template, in order."""
    return _PLACEHOLDER.findall(template)


def render(template: str, event: Mapping[str, Any], measures: Mapping[str, Any]) -> str:
    """Fill a template from the measures, then the event; unknown values become `?`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = measures.get(name, event.get(name))
        if found is None or found in ("", []):
            return "?"
        if isinstance(found, list):
            return ",".join(str(v) for v in found)
        return str(found)

    return _PLACEHOLDER.sub(value, template)
