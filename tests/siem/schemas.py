"""Checkers of documents against the published schemas shipped in tests/siem/data (see its README).

ecs_problems(doc)           every field of an ECS document that ECS does not define, or with a
                            value of the wrong type, or an event.kind/category/type ECS does not allow
ocsf_problems(doc, class)   every attribute of an OCSF event that its class or object does not
                            define, a wrong type or enum value, a required attribute missing
Both return a list of "field: problem" texts (empty: valid).
"""

from __future__ import annotations

import datetime as dt
import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
CUSTOM = "exfilguard"  # our namespace: ECS leaves custom fields to their owner

_ECS_TYPES: dict[str, tuple[type, ...]] = {
    "keyword": (str,),
    "constant_keyword": (str,),
    "wildcard": (str,),
    "match_only_text": (str,),
    "text": (str,),
    "ip": (str,),
    "long": (int,),
    "integer": (int,),
    "short": (int,),
    "byte": (int,),
    "unsigned_long": (int,),
    "float": (int, float),
    "double": (int, float),
    "scaled_float": (int, float),
    "boolean": (bool,),
    "date": (str,),
    "object": (dict,),
    "flattened": (dict,),
}


@cache
def ecs_fields() -> dict[str, Any]:
    """ECS field definitions by flat name."""
    fields: dict[str, Any] = json.loads((DATA / "ecs_fields.json").read_text())["fields"]
    return fields


@cache
def ocsf_schema() -> dict[str, Any]:
    """The compiled OCSF classes and objects."""
    schema: dict[str, Any] = json.loads((DATA / "ocsf_classes.json").read_text())
    return schema


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of objects stay lists (ECS nested fields are rare)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _ecs_value(name: str, spec: dict[str, Any], value: Any) -> list[str]:
    expected = _ECS_TYPES.get(spec["type"])
    if expected is None:
        return [f"{name}: ECS type {spec['type']} not checked by this test"]
    values = value if isinstance(value, list) else [value]
    problems = []
    for v in values:
        if not isinstance(v, expected) or (bool not in expected and isinstance(v, bool)):
            problems.append(f"{name}: {v!r} is not an ECS {spec['type']}")
        elif spec["type"] == "date":
            try:
                dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            except ValueError:
                problems.append(f"{name}: {v!r} is not a date")
    allowed = spec.get("allowed_values")
    if allowed is not None:
        problems += [f"{name}: {v!r} is not an allowed value" for v in values if v not in allowed]
    return problems


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    """What is not valid ECS in `doc` (a nested document)."""
    fields = ecs_fields()
    flat = flatten(doc)
    problems: list[str] = []
    for name, value in flat.items():
        if name.split(".", 1)[0] == CUSTOM:
            continue
        spec = fields.get(name)
        if spec is None:
            problems.append(f"{name}: not an ECS field")
            continue
        problems += _ecs_value(name, spec, value)
    for category in flat.get("event.category", []):
        expected = fields["event.category"]["allowed_values"].get(category, [])
        for kind in flat.get("event.type", []):
            if kind not in expected:
                problems.append(f"event.type: {kind!r} is not expected with event.category {category!r}")
    for required in ("@timestamp", "event.kind", "ecs.version"):
        if required not in flat:
            problems.append(f"{required}: missing")
    return problems


_OCSF_TYPES: dict[str, tuple[type, ...]] = {
    "string_t": (str,),
    "integer_t": (int,),
    "long_t": (int,),
    "timestamp_t": (int,),
    "float_t": (int, float),
    "boolean_t": (bool,),
    "json_t": (dict, list, str, int, float, bool),
}


def _ocsf_object(
    path: str, value: Any, attributes: dict[str, Any], profiles: set[str], problems: list[str]
) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: {value!r} is not an object")
        return
    objects = ocsf_schema()["objects"]
    for name, spec in attributes.items():
        applies = not spec.get("profile") or spec["profile"] in profiles
        if spec["requirement"] == "required" and applies and name not in value:
            problems.append(f"{path}{name}: required, missing")
    for name, item in value.items():
        spec = attributes.get(name)
        if spec is None:
            problems.append(f"{path}{name}: not an attribute here")
            continue
        if spec["is_array"] != isinstance(item, list):
            problems.append(f"{path}{name}: {'an array' if spec['is_array'] else 'not an array'} expected")
            continue
        for element in item if isinstance(item, list) else [item]:
            kind = spec["type"]
            if kind == "object":  # OCSF's free-form object (unmapped, xattributes)
                if not isinstance(element, dict):
                    problems.append(f"{path}{name}: {element!r} is not an object")
                continue
            if kind in objects:
                _ocsf_object(f"{path}{name}.", element, objects[kind], profiles, problems)
                continue
            expected = _OCSF_TYPES.get(kind, (str,))  # the other scalar types are strings
            if not isinstance(element, expected) or (bool not in expected and isinstance(element, bool)):
                problems.append(f"{path}{name}: {element!r} is not {kind}")
            # 0 (Unknown) and 99 (Other) are reserved in every OCSF enum; the class's own uids are
            # checked in ocsf_problems (the dictionary's enum of them lists no classes).
            is_uid = not path and name in ("class_uid", "category_uid", "type_uid")
            if "enum" in spec and not is_uid and str(element) not in {*spec["enum"], "0", "99"}:
                problems.append(f"{path}{name}: {element!r} is not in its enum")


def ocsf_problems(doc: dict[str, Any], class_name: str) -> list[str]:
    """What is not valid OCSF in `doc` for the class `class_name` (e.g. data_security_finding)."""
    klass = ocsf_schema()["classes"][class_name]
    problems: list[str] = []
    profiles = set(doc.get("metadata", {}).get("profiles", []))
    _ocsf_object("", doc, klass["attributes"], profiles, problems)
    if doc.get("class_uid") != klass["uid"]:
        problems.append(f"class_uid: {doc.get('class_uid')} is not {klass['uid']} ({class_name})")
    if doc.get("category_uid") != klass["category_uid"]:
        problems.append(f"category_uid: {doc.get('category_uid')} is not {klass['category_uid']}")
    if doc.get("type_uid") != klass["uid"] * 100 + doc.get("activity_id", -1):
        problems.append("type_uid: not class_uid * 100 + activity_id")
    return problems
