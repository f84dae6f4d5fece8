"""Evaluate stage, part 1: compile condition trees into predicates over one event mapping.

A predicate is a plain closure `event -> bool`; macros and lists are resolved once at
compile time, regexes compiled once (on RE2, see regex.py). Unset fields take their proto default
(see fields.DEFAULTS).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import operator
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

from collector.policy import fields, regex
from collector.policy.fields import CHEAP_FIELDS, DEFAULTS, is_list
from collector.policy.model import (
    AllOf,
    AnyOf,
    Condition,
    FieldTest,
    MacroRef,
    NamedList,
    Not,
    PolicyException,
    TimeOfDay,
    Weekday,
)

EventFields = Mapping[str, Any]
Predicate = Callable[[EventFields], bool]


def _true(_: EventFields) -> bool:
    return True


def _false(_: EventFields) -> bool:
    return False


# Decided at load: a test against an empty named list (nobody is in an empty departing_users),
# and what it decides in turn. The engine offers no events to a policy whose condition is NEVER.
ALWAYS: Predicate = _true
NEVER: Predicate = _false


@functools.lru_cache(maxsize=8192)
def local_time(timestamp: str, zone: str) -> dt.datetime | None:
    """@timestamp (ISO, UTC) in the given zone; None if absent or malformed."""
    try:
        moment = dt.datetime.fromisoformat(timestamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(zoneinfo.ZoneInfo(zone))
    except (TypeError, ValueError, OverflowError):  # OverflowError: year 1 moved west of UTC
        return None


class Compiler:
    """Compiles conditions of one policy set against its macros and lists, in one timezone."""

    def __init__(
        self, macros: Mapping[str, Condition], lists: Mapping[str, NamedList], timezone: str
    ) -> None:
        self._macros = macros
        self._lists = {name: frozenset(item.values) for name, item in lists.items()}
        self._zone = timezone
        self._compiled_macros: dict[str, Predicate] = {}

    def macro(self, name: str) -> Condition:
        """The condition of macro `name`."""
        return self._macros[name]

    def members(self, list_name: str) -> frozenset[Any]:
        """The values of named list `list_name`."""
        return self._lists[list_name]

    def compile(self, condition: Condition | None) -> Predicate:
        """A predicate for `condition` (None is always true)."""
        if condition is None:
            return _true
        if isinstance(condition, AllOf):
            parts = [self.compile(c) for c in sorted(condition.children, key=self.cost)]
            if NEVER in parts:
                return NEVER
            return _all(tuple(p for p in parts if p is not ALWAYS))
        if isinstance(condition, AnyOf):
            return any_of([self.compile(c) for c in sorted(condition.children, key=self.cost)]) or NEVER
        if isinstance(condition, Not):
            inner = self.compile(condition.child)
            if inner is ALWAYS or inner is NEVER:
                return NEVER if inner is ALWAYS else ALWAYS
            return lambda e: not inner(e)
        if isinstance(condition, MacroRef):
            if condition.name not in self._compiled_macros:
                self._compiled_macros[condition.name] = self.compile(self._macros[condition.name])
            return self._compiled_macros[condition.name]
        if isinstance(condition, TimeOfDay):
            return self._time_of_day(condition)
        if isinstance(condition, Weekday):
            return self._weekday(condition)
        return self._field(condition)

    def cost(self, condition: Condition) -> int:
        """How dear a condition is to test, to order the parts of `all` and `any` (tests have no
        side effects, so the order changes only how soon the answer is known): 0 for fields the
        collector has at hand (set or already read by its enrichment), 1 for a field read from the
        stored event, 2 for a list field or a pattern, 3 for local time (a timezone conversion)."""
        if isinstance(condition, FieldTest):
            if condition.field in CHEAP_FIELDS:
                return 0
            return 2 if is_list(condition.field) or condition.op in ("glob", "regex") else 1
        if isinstance(condition, (TimeOfDay, Weekday)):
            return 3
        if isinstance(condition, Not):
            return self.cost(condition.child)
        if isinstance(condition, MacroRef):
            target = self._macros.get(condition.name)
            return self.cost(target) if target is not None else 0
        return max((self.cost(c) for c in condition.children), default=0)

    def exception(self, exc: PolicyException) -> Predicate:
        """A predicate that is true when the exception applies to the event."""
        if exc.condition is not None:
            return self.compile(exc.condition)
        fields = exc.fields
        rows = [
            tuple(frozenset(v) if isinstance(v, tuple) else frozenset((v,)) for v in row)
            for row in exc.values
        ]
        defaults = tuple(DEFAULTS.get(f) for f in fields)

        def applies(e: EventFields) -> bool:
            values = [e.get(f, d) for f, d in zip(fields, defaults, strict=True)]
            return any(
                all(_member(v, allowed) for v, allowed in zip(values, row, strict=True)) for row in rows
            )

        return applies

    def _time_of_day(self, cond: TimeOfDay) -> Predicate:
        zone, start, end, inside = self._zone, cond.start, cond.end, cond.inside

        def test(e: EventFields) -> bool:
            moment = local_time(e.get("@timestamp", ""), zone)
            if moment is None:
                return False
            minute = moment.hour * 60 + moment.minute
            within = start <= minute < end if start <= end else (minute >= start or minute < end)
            return within == inside

        return test

    def _weekday(self, cond: Weekday) -> Predicate:
        zone, days = self._zone, cond.days

        def test(e: EventFields) -> bool:
            moment = local_time(e.get("@timestamp", ""), zone)
            return moment is not None and moment.weekday() in days

        return test

    def _field(self, test: FieldTest) -> Predicate:
        name, op, value = test.field, test.op, test.value
        default = DEFAULTS.get(name)
        # Fields the enrichment set or read are cached on a stored event's view: e.get inline is
        # their cheapest read; the others are read off the protobuf (fields.reader).
        cached = name in CHEAP_FIELDS
        get = fields.reader(name, default)

        if op == "exists":
            present = fields.exists(name)
            return present if value else lambda e: not present(e)
        if op in ("eq", "ne", "any_of", "in", "not_in"):
            if op in ("in", "not_in"):
                allowed = self._lists[str(value)]
            else:
                allowed = frozenset(value) if isinstance(value, tuple) else frozenset((value,))
            positive = op in ("eq", "any_of", "in")
            if not allowed:  # no value is in an empty list
                return NEVER if positive else ALWAYS
            if isinstance(default, list):  # a list field: any element
                return lambda e: _member(get(e), allowed) == positive
            if positive and cached:  # the hot path: a scalar field against a set

                def member(e: EventFields) -> bool:
                    try:
                        return e.get(name, default) in allowed
                    except TypeError:  # an unhashable value where a scalar belongs
                        return False

                return member
            if positive:

                def stored_member(e: EventFields) -> bool:
                    try:
                        return get(e) in allowed
                    except TypeError:
                        return False

                return stored_member

            def not_member(e: EventFields) -> bool:
                try:
                    return get(e) not in allowed
                except TypeError:
                    return True

            return not_member
        if op in ("gt", "gte", "lt", "lte"):
            limit = float(value)  # type: ignore[arg-type]
            compare = _COMPARE[op]
            if cached:

                def number(e: EventFields) -> bool:
                    v = e.get(name, default)
                    return type(v) in _NUMBERS and compare(v, limit)  # a bool is no number here

                return number

            def stored_number(e: EventFields) -> bool:
                v = get(e)
                return type(v) in _NUMBERS and compare(v, limit)

            return stored_number
        patterns: tuple[str, ...] = tuple(str(p) for p in value)  # type: ignore[attr-defined]
        match: Callable[[str], bool]
        if op == "glob":
            match = lambda s: any(fnmatch.fnmatchcase(s, p) for p in patterns)  # noqa: E731
        elif op == "regex":
            regexes = tuple(regex.compile_pattern(p) for p in patterns)
            match = lambda s: any(r.search(s) for r in regexes)  # noqa: E731
        elif op == "startswith":
            match = lambda s: s.startswith(patterns)  # noqa: E731
        elif op == "endswith":
            match = lambda s: s.endswith(patterns)  # noqa: E731
        else:  # contains: a substring of a string, or an element of a list field
            match = lambda s: any(p in s for p in patterns)  # noqa: E731
            if isinstance(default, list):
                wanted = frozenset(patterns)
                return lambda e: any(str(v) in wanted for v in get(e) or ())

        def text(e: EventFields) -> bool:
            v = get(e)
            if isinstance(v, list):
                return any(isinstance(item, str) and match(item) for item in v)
            return isinstance(v, str) and match(v)

        return text


def _all(parts: tuple[Predicate, ...]) -> Predicate:
    if not parts:
        return ALWAYS
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda e: first(e) and second(e)

    def every(e: EventFields) -> bool:
        # A plain loop: all() over a generator costs a frame per call on this hot path.
        for part in parts:  # noqa: SIM110
            if not part(e):
                return False
        return True

    return every


def any_of(parts: list[Predicate]) -> Predicate | None:
    """One predicate true when any of `parts` is (None for none that can be, the part itself for one)."""
    if ALWAYS in parts:
        return ALWAYS
    parts = [p for p in parts if p is not NEVER]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else _any(tuple(parts))


def _any(parts: tuple[Predicate, ...]) -> Predicate:
    if len(parts) == 2:
        first, second = parts
        return lambda e: first(e) or second(e)

    def some(e: EventFields) -> bool:
        for part in parts:  # noqa: SIM110
            if part(e):
                return True
        return False

    return some


_NUMBERS = frozenset({int, float})
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _member(value: Any, allowed: frozenset[Any]) -> bool:
    """Equality against a set of values; a list field matches when any element does."""
    if isinstance(value, list):
        return any(_hashable(v) in allowed for v in value)
    return _hashable(value) in allowed


def _hashable(value: Any) -> Any:
    return value if not isinstance(value, (dict, list)) else None


def without_known_actions(
    condition: Condition | None, actions: frozenset[str], macros: Mapping[str, Condition]
) -> Condition | None:
    """`condition` for events whose event.action is known to be one of `actions`: tests of
    event.action that every one of them passes are left out (None: nothing left to test).

    The engine offers an event only to the policies indexed under its action, so the action
    test each policy starts with would hold every time; each is a field read and a call per
    policy and event. Macros holding such a test are inlined; other macros stay shared.
    """
    if condition is None:
        return None
    if isinstance(condition, FieldTest):
        if condition.field == "event.action" and condition.op in ("eq", "any_of"):
            values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
            if actions <= frozenset(str(v) for v in values):
                return None
        return condition
    if isinstance(condition, MacroRef):
        target = macros.get(condition.name)
        if target is None:
            return condition
        reduced = without_known_actions(target, actions, macros)
        return condition if reduced == target else reduced
    if isinstance(condition, AllOf):
        reduced_children = [without_known_actions(c, actions, macros) for c in condition.children]
        kept = [k for k in reduced_children if k is not None]
        if len(kept) == len(condition.children) and all(
            k is c for k, c in zip(kept, condition.children, strict=True)
        ):
            return condition
        if not kept:
            return None
        return kept[0] if len(kept) == 1 else AllOf(tuple(kept), condition.where)
    return condition


def required_actions(condition: Condition | None, macros: Mapping[str, Condition]) -> frozenset[str] | None:
    """The event.action values an event must have to satisfy `condition`, or None if any may.

    The engine indexes policies by these, so an event is tested only against policies that can match.
    """
    if condition is None:
        return None
    if isinstance(condition, MacroRef):
        target = macros.get(condition.name)
        return required_actions(target, macros) if target is not None else None
    if isinstance(condition, FieldTest) and condition.field == "event.action":
        if condition.op == "eq":
            return frozenset((str(condition.value),))
        if condition.op == "any_of" and isinstance(condition.value, tuple):
            return frozenset(str(v) for v in condition.value)
        return None
    if isinstance(condition, AllOf):
        found: frozenset[str] | None = None
        for child in condition.children:
            actions = required_actions(child, macros)
            if actions is not None:
                found = actions if found is None else found & actions
        return found
    if isinstance(condition, AnyOf):
        union: set[str] = set()
        for child in condition.children:
            actions = required_actions(child, macros)
            if actions is None:
                return None
            union |= actions
        return frozenset(union)
    return None
