"""Helpers for policy tests: build sets from inline YAML, make events."""

from __future__ import annotations

import datetime as dt
import itertools
import textwrap
from typing import Any

from google.protobuf import json_format

from collector.policy import lint, parse, validate
from collector.policy.engine import PolicyEngine
from collector.policy.errors import PolicySetError, Problem
from collector.policy.model import PolicySet
from protos import exfilguard_pb2 as pb
from protos.events import EventView

_ids = itertools.count(1)


def policy_set(text: str, path: str = "inline.yaml") -> PolicySet:
    """A validated set from inline YAML; PolicySetError if it has errors."""
    into = PolicySet()
    problems: list[Problem] = []
    parse.parse_text(textwrap.dedent(text), path, into, problems)
    problems += validate.validate(into)
    if any(p.severity == "error" for p in problems):
        raise PolicySetError(problems)
    return into


def problems_of(text: str, path: str = "inline.yaml") -> list[Problem]:
    """Every problem (errors and warnings) in inline YAML."""
    into = PolicySet()
    problems: list[Problem] = []
    parse.parse_text(textwrap.dedent(text), path, into, problems)
    return problems + validate.validate(into) + lint.check(into)


def engine(text: str, timezone: str = "UTC", suppression: float = 0.0) -> PolicyEngine:
    """An engine over inline YAML (suppression off unless asked for)."""
    return PolicyEngine(policy_set(text), timezone=timezone, suppression_seconds=suppression)


def event(action: str, when: str = "2026-11-18T10:00:00.000000Z", **fields: Any) -> dict[str, Any]:
    """An event mapping; keyword names use __ for dots (file__path -> file.path)."""
    out: dict[str, Any] = {
        "@timestamp": when,
        "event.id": f"ev-{next(_ids)}",
        "event.action": action,
        "agent.id": "agent-1",
        "host.name": "ws-1",
        "user.name": "alice",
    }
    out.update({k.replace("__", "."): v for k, v in fields.items()})
    return out


def fired(engine: PolicyEngine, *events: dict[str, Any], as_stored: bool = False) -> list[str]:
    """Policy ids of the alerts the events raise, in order (`as_stored`: fed as stored events'
    views, which meet each policy's generated function, collector/policy/fused.py)."""
    return [a.policy_id for e in events for a in engine.evaluate(stored(e) if as_stored else e)]


def after_hours(when: dt.datetime) -> bool:
    """The shipped pack's after_hours macro (outside 07:00-19:00, or at the weekend) for a
    collector whose timezone is UTC: tests that copy for real at the wall-clock time expect
    usb-write-after-hours exactly when this says so."""
    when = when.astimezone(dt.UTC)
    return when.weekday() >= 5 or not 7 <= when.hour < 19


def _nested(mapping: dict[str, Any]) -> dict[str, Any]:
    """A dotted mapping as the nested JSON of the proto (records in lists too)."""
    out: dict[str, Any] = {}
    for name, value in mapping.items():
        *parents, leaf = ("timestamp" if name == "@timestamp" else name).split(".")
        holder = out
        for part in parents:
            holder = holder.setdefault(part, {})
        is_records = isinstance(value, list) and value and isinstance(value[0], dict)
        holder[leaf] = [_nested(v) for v in value] if is_records else value
    return out


def stored(mapping: dict[str, Any]) -> EventView:
    """The event as the policy process sees it: a view of the stored protobuf."""
    return EventView(json_format.ParseDict(_nested(mapping), pb.Event()))
