"""Parse stage, the shared part: problems with locations, and the condition language.

`NodeParser` records a located problem for each bad node (`fail`) and parses conditions (fields,
operators, all/any/not, macros, time of day, weekdays): the grammar of `when`, macros and
exceptions. `parse` builds files, lists, macros and policies on top of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, cast

from collector.policy import regex
from collector.policy.errors import Problem
from collector.policy.model import (
    AllOf,
    AnyOf,
    Condition,
    FieldTest,
    MacroRef,
    Not,
    TimeOfDay,
    Weekday,
    Where,
)
from common import units, yamlfile
from common.errors import ExfilGuardError
from common.yamlfile import Location

MAX_CONDITION_DEPTH = 32  # a limit on input: a mistake must not exhaust the collector

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DAYS = {
    name: i
    for i, names in enumerate(
        (
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
            ("sun", "sunday"),
        )
    )
    for name in names
}

STRING_OPS = ("glob", "regex", "contains", "startswith", "endswith")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
OPS = ("eq", "ne", "any_of", "in", "not_in", "exists", *NUMBER_OPS, *STRING_OPS)
COMBINATORS = ("all", "any", "not", "macro", "time_of_day", "weekday")


class Skip(ExfilGuardError):
    """This node had a problem (already recorded); drop the node, keep parsing its siblings."""


class NodeParser:
    """Parses the nodes of one policy document, recording every problem with its location."""

    def __init__(self, doc: yamlfile.Document, problems: list[Problem]) -> None:
        self.doc = doc
        self.problems = problems
        self.kind = ""
        self.item = ""
        self.item_loc: Location = ()

    # -- problems and locations

    def where(self, loc: Location) -> Where:
        mark = self.doc.mark(loc)
        return Where(self.doc.path, mark.line, mark.column, yamlfile.dotted(loc[len(self.item_loc) :]))

    def fail(self, code: str, loc: Location, message: str) -> Skip:
        where = self.where(loc)
        self.problems.append(
            Problem(code, where.path, where.line, where.column, message, self.kind, self.item, where.key)
        )
        return Skip()

    def expect(self, value: Any, kind: type | tuple[type, ...], loc: Location, what: str) -> None:
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail("EG105", loc, f"expected {what}, got {describe(value)}")

    def text(self, value: Any, loc: Location, what: str = "a string") -> str:
        self.expect(value, str, loc, what)
        return cast(str, value)

    def keys(
        self, mapping: dict[str, Any], loc: Location, allowed: Iterable[str], required: Iterable[str]
    ) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if key not in allowed:
                self.fail("EG103", (*loc, key), f"unknown key; expected one of {', '.join(allowed)}")
        missing = [key for key in required if key not in mapping]
        if missing:
            raise self.fail("EG104", loc, f"required key is missing: {', '.join(missing)}")

    def field_list(self, value: Any, loc: Location) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        self.expect(value, list, loc, "a field name or a list of field names")
        out = []
        for i, item in enumerate(value):
            out.append(self.text(item, (*loc, i), "a field name"))
        return tuple(out)

    # -- conditions

    def condition(self, body: Any, loc: Location, depth: int = 0) -> Condition:
        if depth > MAX_CONDITION_DEPTH:
            raise self.fail("EG106", loc, f"conditions nest at most {MAX_CONDITION_DEPTH} deep")
        if isinstance(body, str):
            return MacroRef(body, self.where(loc))  # a bare name is a macro, as in Falco
        self.expect(body, dict, loc, "a condition (a mapping of fields, or all/any/not/macro)")
        if not body:
            raise self.fail("EG106", loc, "an empty condition")
        parts = self.each([(self.part, key, value, (*loc, key), depth) for key, value in body.items()])
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts), self.where(loc))

    def each(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run every parse call so siblings are checked too; the ones that parsed are kept (the
        problem was recorded, and the policy is marked broken by `policy`)."""
        out = []
        for fn, *args in calls:
            try:
                out.append(fn(*args))
            except Skip:
                continue
        if not out:
            raise Skip()
        return out

    def part(self, key: str, value: Any, loc: Location, depth: int) -> Condition:
        where = self.where(loc)
        if key in ("all", "any"):
            self.expect(value, list, loc, f"a list of conditions under {key}")
            if not value:
                raise self.fail("EG106", loc, f"{key} needs at least one condition")
            children = tuple(
                self.each([(self.condition, c, (*loc, i), depth + 1) for i, c in enumerate(value)])
            )
            return AllOf(children, where) if key == "all" else AnyOf(children, where)
        if key == "not":
            return Not(self.condition(value, loc, depth + 1), where)
        if key == "macro":
            return MacroRef(self.text(value, loc, "a macro name"), where)
        if key == "time_of_day":
            return self.time_of_day(value, loc)
        if key == "weekday":
            days = value if isinstance(value, list) else [value]
            out = set()
            for i, day in enumerate(days):
                if not isinstance(day, str) or day.lower() not in _DAYS:
                    raise self.fail(
                        "EG110",
                        (*loc, i) if isinstance(value, list) else loc,
                        f"expected a weekday such as mon or saturday, got {day!r}",
                    )
                out.add(_DAYS[day.lower()])
            return Weekday(frozenset(out), where)
        return self.field_test(key, value, loc)

    def time_of_day(self, value: Any, loc: Location) -> TimeOfDay:
        self.expect(value, dict, loc, "a mapping such as {outside: ['07:00', '19:00']}")
        if len(value) != 1 or next(iter(value)) not in ("between", "outside"):
            raise self.fail("EG111", loc, "time_of_day takes between or outside")
        mode, span = next(iter(value.items()))
        sloc = (*loc, mode)
        if not isinstance(span, list) or len(span) != 2:
            raise self.fail("EG110", sloc, "expected two times, e.g. ['19:00', '07:00']")
        minutes = []
        for i, text in enumerate(span):
            m = _HHMM.match(str(text)) if isinstance(text, str) else None
            if not m:
                raise self.fail("EG110", (*sloc, i), f"expected a time of day HH:MM (quoted), got {text!r}")
            minutes.append(int(m.group(1)) * 60 + int(m.group(2)))
        return TimeOfDay(minutes[0], minutes[1], mode == "between", self.where(loc))

    def field_test(self, field: str, value: Any, loc: Location) -> Condition:
        where = self.where(loc)
        if isinstance(value, list):
            return FieldTest(field, "any_of", self.scalars(value, loc), where)
        if not isinstance(value, dict):
            self.expect(
                value, (str, int, float, bool), loc, "a value, a list of values or a mapping of operators"
            )
            return FieldTest(field, "eq", value, where)
        if not value:
            raise self.fail("EG106", loc, "an empty field test")
        tests: list[Condition] = []
        for op, operand in value.items():
            oloc = (*loc, op)
            tests.append(FieldTest(field, op, self.operand(op, operand, oloc), self.where(oloc)))
        return tests[0] if len(tests) == 1 else AllOf(tuple(tests), where)

    def scalars(self, values: list[Any], loc: Location) -> tuple[object, ...]:
        if not values:
            raise self.fail("EG106", loc, "an empty list matches nothing")
        for i, v in enumerate(values):
            self.expect(v, (str, int, float, bool), (*loc, i), "a string or a number")
        return tuple(values)

    def operand(self, op: str, operand: Any, loc: Location) -> object:
        if op not in OPS:
            raise self.fail("EG111", loc, f"unknown operator; expected one of {', '.join(OPS)}")
        if op in ("eq", "ne"):
            self.expect(operand, (str, int, float, bool), loc, "a single value")
            return operand
        if op == "any_of":
            self.expect(operand, list, loc, "a list of values")
            return self.scalars(operand, loc)
        if op in ("in", "not_in"):
            return self.text(operand, loc, "the name of a list")
        if op == "exists":
            self.expect(operand, bool, loc, "true or false")
            return operand
        if op in NUMBER_OPS:
            try:
                return units.size(operand)
            except ValueError as exc:
                raise self.fail("EG108", loc, str(exc)) from exc
        patterns = operand if isinstance(operand, list) else [operand]
        for i, pattern in enumerate(patterns):
            ploc = (*loc, i) if isinstance(operand, list) else loc
            self.text(pattern, ploc, "a string or a list of strings")
            if op == "regex":
                try:
                    regex.compile_pattern(pattern)
                except regex.NotLinear as exc:
                    raise self.fail("EG114", ploc, exc.message) from exc
                except regex.RegexError as exc:
                    raise self.fail("EG109", ploc, exc.message) from exc
        return tuple(patterns)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def describe(value: Any) -> str:
    """How a problem names the value it got: nothing, a mapping, a list, or type and value."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
