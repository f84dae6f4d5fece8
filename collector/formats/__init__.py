"""What leaves the collector for a SIEM: alerts and events as ExfilGuard, ECS or OCSF documents.

    formats.alert("ecs", alert)      # an alert's JSON object (SPEC §10) -> an ECS document
    formats.event("ocsf", mapping)   # a stored event's mapping (protos.events.to_mapping) -> OCSF
    formats.event_json("ocsf", mapping)   # the same as JSON bytes, laid out once per shape (forwarding)

exfilguard   the SPEC's dotted names, unchanged (the contract of the JSONL sink and exports)
ecs.py       Elastic Common Schema: event.kind/category/type, rule.*, message, volume.* for the
             removable device, file.*, process.*, user.*, host.*; the rest under exfilguard.*
ocsf.py      OCSF: alerts as Data Security Findings, events as File System / Peripheral Activity
layout.py    a format's JSON worked out once per shape of event, then filled per event

Both mappings read the flat mapping that protos.events.to_mapping made (the one protobuf walker);
neither walks protobuf messages itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson

from collector.formats import ecs, ocsf
from collector.formats.layout import Layouts

Format = Literal["exfilguard", "ecs", "ocsf"]
FORMATS: tuple[Format, ...] = ("exfilguard", "ecs", "ocsf")

Document = dict[str, Any]

_ALERTS: dict[str, Callable[[Mapping[str, Any]], Document]] = {
    "exfilguard": dict,
    "ecs": ecs.alert,
    "ocsf": ocsf.alert,
}
_EVENTS: dict[str, Callable[[Mapping[str, Any]], Document]] = {
    "exfilguard": dict,
    "ecs": ecs.event,
    "ocsf": ocsf.event,
}


def checked(fmt: str) -> str:
    """`fmt` if it names a format; ValueError naming the known ones otherwise (at configuration,
    so that a typo fails at start rather than at the first document)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def alert(fmt: str, body: Mapping[str, Any]) -> Document:
    """An alert (the SPEC §10 object) in `fmt`; KeyError for an unknown format."""
    return _ALERTS[fmt](body)


def event(fmt: str, mapping: Mapping[str, Any]) -> Document:
    """A stored event (its to_mapping form) in `fmt`; KeyError for an unknown format."""
    return _EVENTS[fmt](mapping)


_JSON: dict[str, Layouts] = {
    "ecs": Layouts(ecs.event, ecs.SHAPED_BY),
    "ocsf": Layouts(ocsf.event, ocsf.SHAPED_BY),
}


def event_json(fmt: str, mapping: Mapping[str, Any]) -> bytes:
    """`orjson.dumps(event(fmt, mapping))`, from the layout of the event's shape; KeyError if unknown."""
    return event_json_of(fmt)(mapping)


def event_json_of(fmt: str) -> Callable[[Mapping[str, Any]], bytes]:
    """`event_json` in `fmt` as a function of the mapping (a batch looks it up once); KeyError if unknown."""
    layouts = _JSON.get(fmt)
    if layouts is not None:
        return layouts.json
    function = _EVENTS[fmt]
    return lambda mapping: orjson.dumps(function(mapping))
