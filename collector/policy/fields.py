"""The event fields a policy may name, derived from protos/exfilguard.proto (the one declaration).

`FIELDS` maps each dotted ECS name to whether it holds a list (tags, exfilguard.source.tags,
exfilguard.copy.method, exfilguard.inventory), so a typo such as `file.pth` is caught at load time.
`DEFAULTS` holds what an unset field means (proto3 drops defaults from the mapping).
`ENRICHED` adds the fields the collector itself sets at evaluation time (device approval,
per-user baselines, the risk score: collector/behaviour/), documented in docs/policies.md.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from protos.events import EventView, model_fields

# Python types a mapping value of each proto scalar type may have (what to_mapping produces).
_NUMBERS: tuple[type, ...] = (int, float)
_KINDS: dict[int, tuple[type, ...]] = {
    FieldDescriptor.CPPTYPE_STRING: (str,),
    FieldDescriptor.CPPTYPE_BOOL: (bool,),
    FieldDescriptor.CPPTYPE_INT32: (int,),
    FieldDescriptor.CPPTYPE_INT64: (int,),
    FieldDescriptor.CPPTYPE_UINT32: (int,),
    FieldDescriptor.CPPTYPE_UINT64: (int,),
    FieldDescriptor.CPPTYPE_FLOAT: _NUMBERS,
    FieldDescriptor.CPPTYPE_DOUBLE: _NUMBERS,
    FieldDescriptor.CPPTYPE_ENUM: (str, int),
}
_TYPES: dict[str, tuple[type, ...]] = {}  # field -> the Python types its (scalar) values may have


def _fields() -> tuple[dict[str, bool], dict[str, object]]:
    out: dict[str, bool] = {}
    defaults: dict[str, object] = {}
    for name, field, kind in model_fields():
        _TYPES[name] = (str,) if field.message_type is not None else _KINDS.get(field.cpp_type, ())
        if kind == "timestamp":
            out[name] = False
            defaults[name] = None
        elif kind != "message":
            repeated = bool(field.is_repeated)
            out[name] = repeated
            # proto3 leaves unset scalars out of the mapping; a policy sees their default, except
            # for fields with presence (file.size): unknown is not zero.
            defaults[name] = [] if repeated else (None if field.has_presence else field.default_value)
    return out, defaults


FIELDS, DEFAULTS = _fields()

# Set by the collector on each event before policies see it (collector/behaviour/enrich.py):
# name -> default when the collector runs without behaviour (`policy test` on bare events).
ENRICHED: dict[str, object] = {
    "device.approved": False,
    "device.approved_for_user": False,
    "exfilguard.baseline.warm": False,
    "exfilguard.baseline.history_days": 0,
    "exfilguard.baseline.removable_days": 0,
    "exfilguard.baseline.first_removable_use": False,
    "exfilguard.baseline.first_device_use": False,
    "exfilguard.baseline.first_device_on_host": False,
    "exfilguard.baseline.unusual_hour": False,
    "exfilguard.baseline.files_today": 0,
    "exfilguard.baseline.bytes_today": 0,
    "exfilguard.baseline.tagged_share": 0.0,
    "exfilguard.baseline.volume_ratio": 0.0,
    "exfilguard.baseline.files_ratio": 0.0,
    "exfilguard.baseline.peer_ratio": 0.0,
    "exfilguard.baseline.peer_group": "",
    "exfilguard.risk.score": 0.0,
    "exfilguard.risk.signals": [],
    "exfilguard.risk.reported": False,
}
for _name, _default in ENRICHED.items():
    FIELDS[_name] = isinstance(_default, list)
    DEFAULTS[_name] = _default
    _TYPES[_name] = (
        (str,) if isinstance(_default, list) else _NUMBERS if type(_default) is float else (type(_default),)
    )


def type_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be field `name` of an event (as to_mapping builds it), or None if it can.

    Recorded events (`policy test --events`) are JSON an admin hands in: a list where a scalar
    belongs would otherwise surface as a traceback deep in a window or the suppressor.
    """
    kinds = _TYPES.get(name)
    if kinds is None:
        return None  # not a field policies know: carried along, never used as a key or a number
    items = value if FIELDS.get(name) else [value]
    if FIELDS.get(name) and not isinstance(value, list):
        return "expected a list"
    for item in items:  # type: ignore[attr-defined]
        if FIELDS.get(name) and kinds == (str,) and isinstance(item, dict):
            continue  # a list of records (exfilguard.inventory, copy members)
        if isinstance(item, bool) and bool not in kinds:
            return f"expected {' or '.join(k.__name__ for k in kinds)}, not a boolean"
        if not isinstance(item, kinds):
            return f"expected {' or '.join(k.__name__ for k in kinds)}, not {type(item).__name__}"
    return None


# Fields at hand when policies run: set by the collector's enrichment, or read by it from every
# event (so a stored event's view holds them already converted).
CHEAP_FIELDS = frozenset({*ENRICHED, "event.action", "user.name", "device.serial", "host.name"})

Reader = Callable[[Mapping[str, Any]], Any]
_MISSING = object()


def _plain(name: str) -> tuple[Callable[[Any], Any], FieldDescriptor] | None:
    """The proto attribute path of a stored field policies may read straight off a view's
    protobuf (a singular, non-float scalar the enrichment never sets), or None."""
    if name in CHEAP_FIELDS:
        return None  # already converted on the view: its cached read is cheaper
    for model in model_fields():
        if model.name != name:
            continue
        field = model.field
        floats = field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)
        if model.kind != "scalar" or model.repeated or floats:
            return None  # a timestamp, a list, -0.0 (set, though it reads as zero)
        return operator.attrgetter("event." + name), field
    return None


def stored_scalar(name: str) -> tuple[str, bool] | None:
    """Where a stored event's protobuf holds field `name` when it is read straight off it (as
    `reader` does): the attribute path under the event and whether unset is told apart from zero
    (file.size), or None for a field read through the view."""
    plain = _plain(name)
    return None if plain is None else (name, plain[1].has_presence)


def reader(name: str, default: Any = None) -> Reader:
    """`event.get(name, default)` for any event mapping, faster on a stored event's view.

    A view converts a field on first read and caches it (~0.5 us); the engine reads most stored
    fields once per event, so for a scalar it reads the protobuf directly (~0.15 us): the same
    value (proto3 leaves a scalar equal to its default unset, and the view reads it as absent).
    """
    plain = _plain(name)
    if plain is None:
        return lambda e: e.get(name, default)
    read, field = plain
    if field.has_presence:  # file.size: unset is unknown, not zero
        path, _, leaf = ("event." + name).rpartition(".")
        parent = operator.attrgetter(path)

        def present(e: Mapping[str, Any]) -> Any:
            if type(e) is EventView:
                holder = parent(e)
                return getattr(holder, leaf) if holder.HasField(leaf) else default
            return e.get(name, default)

        return present

    def scalar(e: Mapping[str, Any]) -> Any:
        if type(e) is EventView:
            return read(e) or default
        return e.get(name, default)

    return scalar


def stored_list(name: str) -> bool:
    """True when `name` is a list of scalars a stored event's protobuf holds (tags), whose
    presence `exists` asks without building the list."""
    if name in CHEAP_FIELDS or not FIELDS.get(name):
        return False
    return any(model.name == name and model.kind == "scalar" for model in model_fields())


def exists(name: str) -> Callable[[Mapping[str, Any]], bool]:
    """True when the event carries the field: on a view of a stored list field (tags) without
    building the list."""
    repeated = operator.attrgetter("event." + name) if stored_list(name) else None
    if repeated is None:
        get = reader(name, _MISSING)
        return lambda e: get(e) is not _MISSING
    items = repeated

    def nonempty(e: Mapping[str, Any]) -> bool:
        if type(e) is EventView:
            return len(items(e)) > 0
        return e.get(name, _MISSING) is not _MISSING

    return nonempty


def is_field(name: str) -> bool:
    """True when `name` is a dotted event field of the proto."""
    return name in FIELDS


def is_list(name: str) -> bool:
    """True when the field holds a list (repeated in the proto)."""
    return FIELDS.get(name, False)
