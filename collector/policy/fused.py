"""Evaluate stage, part 3: each policy fused into one generated function for stored events.

    fire = fused.build(policy, when, compiler, run=run, window=window, by=by, plain_key=...)
    firings = fire(view, now)    # view: protos.events.EventView of a stored event (enriched)

The policy process evaluates lazy views of stored events (protos.events.EventView). Per policy
and event the closures of conditions.py cost a Python call per node of the condition tree (a
macro, an `all`, a list test), one more for the exception and one for what the policy does with
a match, and each stored field read asks whether the event is a view. Here a policy's `when`,
its exceptions and, for an aggregate or a sequence, the steps the event meets, its group key,
event id and window entry become the body of one function, generated as Python source at load:
the tests are inline expressions in the same order as the closures' (cheapest first), stored
scalar fields are read straight off the view's protobuf, enriched fields off the view. What is
not inlined (patterns, local time, list fields, structured exceptions, coverage windows, keys
holding a list field) calls the very closure the mapping path uses. tests/policy/test_language.py
runs its condition, window and sequence cases both ways, and tests/policy/test_stored_views.py
replays every shipped policy's examples both ways and compares the alerts.

Mappings (`policy test` on recorded events, the benchmarks' dicts) keep the closures.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Sequence
from typing import Any

from collector.policy import fields
from collector.policy.conditions import Compiler
from collector.policy.fields import CHEAP_FIELDS, DEFAULTS
from collector.policy.model import (
    AllOf,
    AnyOf,
    Condition,
    FieldTest,
    MacroRef,
    Not,
    Policy,
    TimeOfDay,
    Weekday,
)
from collector.policy.runner import NOTHING, Runner
from collector.policy.windows import AggregateWindow, CoverageWindow, SequenceWindow

Fire = Callable[[Any, float], Sequence[Any]]  # (view, event time) -> firings

_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_MEMBERSHIP = ("eq", "ne", "any_of", "in", "not_in")


def _attribute_path(name: str) -> bool:
    """True when `name` can be written as attribute access in Python source (no keyword part)."""
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split("."))


class _Source:
    """The generated function's text and the constants and closures it refers to by name."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self.names: dict[str, Any] = {"NOTHING": NOTHING, "NUMBERS": frozenset({int, float})}
        self._count = 0

    def bind(self, value: Any) -> str:
        """A name for `value` in the generated function's globals."""
        self._count += 1
        name = f"_k{self._count}"
        self.names[name] = value
        return name

    def closure(self, condition: Condition) -> str:
        """A call of the closure the mapping path compiles for `condition`."""
        return f"{self.bind(self.compiler.compile(condition))}(e)"

    def read(self, name: str, default: Any) -> str:
        """An expression for `e.get(name, default)` as fields.reader computes it on a view."""
        if name not in CHEAP_FIELDS:
            stored = fields.stored_scalar(name)
            if stored is not None and _attribute_path(name):
                path, presence = stored
                if presence:  # unset is unknown, not zero (file.size)
                    parent, _, leaf = path.rpartition(".")
                    return f"(pe.{path} if pe.{parent}.HasField({leaf!r}) else {self.bind(default)})"
                # proto3 leaves a scalar equal to its default unset: the view reads it as absent
                return f"(pe.{path} or {self.bind(default)})"
        return f"e.get({name!r}, {self.bind(default)})"

    def expr(self, condition: Condition | None) -> str:
        """A Python expression over `e` (the view) and `pe` (its protobuf) true when `condition` holds."""
        if condition is None:
            return "True"
        if isinstance(condition, AllOf):
            parts = [self.expr(c) for c in sorted(condition.children, key=self.compiler.cost)]
            return _join(parts, "and", "True", "False")
        if isinstance(condition, AnyOf):
            parts = [self.expr(c) for c in sorted(condition.children, key=self.compiler.cost)]
            return _join(parts, "or", "False", "True")
        if isinstance(condition, Not):
            inner = self.expr(condition.child)
            if inner in ("True", "False"):
                return "False" if inner == "True" else "True"
            return f"(not {inner})"
        if isinstance(condition, MacroRef):
            return self.expr(self.compiler.macro(condition.name))
        if isinstance(condition, (TimeOfDay, Weekday)):
            return self.closure(condition)
        return self._field(condition)

    def _field(self, test: FieldTest) -> str:
        name, op, value = test.field, test.op, test.value
        default = DEFAULTS.get(name)
        if isinstance(default, list):
            if op == "exists" and fields.stored_list(name) and _attribute_path(name):
                # whether a stored list field is set, without building the list (fields.exists)
                return f"(len(pe.{name}) {'>' if value else '=='} 0)"
            return self.closure(test)  # list fields: any element (conditions._member)
        if op in _MEMBERSHIP:
            if op in ("in", "not_in"):
                allowed = self.compiler.members(str(value))
            else:
                allowed = frozenset(value) if isinstance(value, tuple) else frozenset((value,))
            positive = op in ("eq", "any_of", "in")
            if not allowed:
                return "False" if positive else "True"
            # A view's scalar fields are proto scalars or the enrichment's: always hashable, so
            # the closures' TypeError guard (for recorded JSON) has nothing to catch here.
            return f"({self.read(name, default)} {'in' if positive else 'not in'} {self.bind(allowed)})"
        if op in _COMPARE:
            slot = f"_v{self._count}"
            self._count += 1
            limit = self.bind(float(value))  # type: ignore[arg-type]
            read = self.read(name, default)
            # a bool is no number here (conditions._NUMBERS)
            return f"(type({slot} := {read}) in NUMBERS and {slot} {_COMPARE[op]} {limit})"
        return self.closure(test)


def _join(parts: list[str], op: str, neutral: str, decisive: str) -> str:
    """`parts` joined by `op`, with the tests decided at load (an empty named list) folded as
    conditions.Compiler folds them: the neutral ones left out, a decisive one decides."""
    if decisive in parts:
        return decisive
    kept = [p for p in parts if p != neutral]
    if not kept:
        return neutral
    return kept[0] if len(kept) == 1 else "(" + f" {op} ".join(kept) + ")"


# A stored field read as `pe.<message path>.<leaf>`: the message path is what is held in a local.
_NESTED = re.compile(r"\bpe\.((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\.(?=[A-Za-z_])")


def _hoisted(lines: list[str]) -> list[str]:
    """`lines` with each nested message the function reads more than once held in a local from the
    line that first reads it: through upb every `pe.process` builds the message's Python object
    again (~0.3 us; its field ~0.3 us more), and an exception list reads process.name, .executable
    and .name again. Held eagerly: a line that then short-circuits has read one message in vain."""
    out: list[str] = []
    held: dict[str, str] = {}
    for number, written in enumerate(lines):
        later = "\n".join(lines[number:])
        line = written
        for path in dict.fromkeys(_NESTED.findall(line)):
            if path in held or len(re.findall(rf"\bpe\.{re.escape(path)}\.", later)) < 2:
                continue
            held[path] = f"m{len(held)}"
            out.append(f"    {held[path]} = pe.{path}")
        for path, local in sorted(held.items(), key=lambda item: -len(item[0])):
            line = re.sub(rf"\bpe\.{re.escape(path)}\.", f"{local}.", line)
        out.append(line)
    return out


def build(
    policy: Policy,
    when: Condition | None,
    compiler: Compiler,
    *,
    run: Runner,
    window: AggregateWindow | CoverageWindow | SequenceWindow | None,
    by: tuple[str, ...],
    plain_key: bool,
) -> Fire:
    """One function doing on a view what `when`, the policy's exceptions and `run` do in turn:
    the firings of the event (NOTHING when it does not match or is excepted)."""
    source = _Source(compiler)
    lines = ["def fire(e, now):"]
    test = source.expr(when)
    if test != "True":
        lines.append(f"    if not {test}: return NOTHING")
    excepted = []
    for exc in policy.exceptions:
        if exc.condition is not None:
            excepted.append(source.expr(exc.condition))
        else:
            excepted.append(f"{source.bind(compiler.exception(exc))}(e)")
    exempt = _join(excepted, "or", "False", "True")
    if exempt != "False":
        lines.append(f"    if {exempt}: return NOTHING")
    # runner.build's aggregate and sequence, inline: the key's fields read as runner.key_of does
    # (absent: None), the event id as runner's _event_id
    key = ", ".join(source.read(f, None) for f in by)
    key = f"({key},)" if len(by) == 1 else f"({key})"
    event_id = source.read("event.id", "")
    if type(window) is AggregateWindow and plain_key:
        # The measured fields read here too (AggregateWindow.add's readers, inline) where they are
        # stored scalars; a list or an enriched field goes through add.
        measured = [f for f in (window.sum_field, window.distinct_field) if f is not None]
        if all(fields.stored_scalar(f) is not None and _attribute_path(f) for f in measured):
            amount = "0.0"
            if window.sum_field is not None:
                lines.append(f"    a = {source.read(window.sum_field, None)}")
                amount = "(float(a) if type(a) in NUMBERS else 0.0)"  # a bool is no number here
            value = source.read(window.distinct_field, None) if window.distinct_field else "None"
            count = source.bind(window.count)
            lines.append(f"    fired = {count}({key}, now, {event_id}, e, {amount}, {value})")
        else:
            lines.append(f"    fired = {source.bind(window.add)}({key}, now, {event_id}, e)")
        lines.append("    return (fired,) if fired else NOTHING")
    elif type(window) is SequenceWindow and plain_key and policy.sequence is not None:
        lines.append("    matched = []")  # the steps the event meets, in order
        for number, step in enumerate(policy.sequence.steps):
            met = source.expr(step.condition)
            if met != "False":
                lines.append(f"    if {met}: matched.append({number})")
        lines.append("    if not matched: return NOTHING")
        advance = source.bind(window.add)
        lines.append(f"    fired = {advance}({key}, now, {event_id}, e, frozenset(matched))")
        lines.append("    return (fired,) if fired else NOTHING")
    else:
        lines.append(f"    return {source.bind(run)}(e, now)")
    lines = _hoisted(lines)
    if any("pe." in line for line in lines):
        lines.insert(1, "    pe = e.event")
    namespace = dict(source.names)
    code = compile("\n".join(lines), f"<policy {policy.id}>", "exec")
    exec(code, namespace)  # noqa: S102 - source generated above from the parsed policy, no input text
    fire: Fire = namespace["fire"]
    return fire

