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
}


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
