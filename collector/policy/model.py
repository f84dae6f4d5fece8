"""The parsed form of a policy set: lists, macros, policies and condition trees, each with its location.

Produced by `parse`, checked by `validate`, compiled and run by `conditions` and `engine`.
Nothing here evaluates anything; `walk` and `policy_conditions` only visit the trees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal

SEVERITIES = ("low", "medium", "high", "critical")
Severity = Literal["low", "medium", "high", "critical"]


@dataclass(frozen=True)
class Where:
    """Where an item or node was written: file, 1-based line and column, dotted key in the item."""

    path: str
    line: int
    column: int
    key: str = ""


# ------------------------------------------------------------------ conditions


@dataclass(frozen=True)
class FieldTest:
    """`field op value`: eq, ne, any_of, in, not_in, gt, gte, lt, lte, glob, regex, contains,
    startswith, endswith, exists. For `in`/`not_in` the value is a list name."""

    field: str
    op: str
    value: object
    where: Where


@dataclass(frozen=True)
class AllOf:
    """Every child holds."""

    children: tuple[Condition, ...]
    where: Where


@dataclass(frozen=True)
class AnyOf:
    """At least one child holds."""

    children: tuple[Condition, ...]
    where: Where


@dataclass(frozen=True)
class Not:
    """The child does not hold."""

    child: Condition
    where: Where


@dataclass(frozen=True)
class MacroRef:
    """A named macro's condition."""

    name: str
    where: Where


@dataclass(frozen=True)
class TimeOfDay:
    """Local time of @timestamp (collector's timezone) within [start, end) minutes after midnight;
    start > end wraps over midnight (19:00-07:00). `inside=False` means outside the span."""

    start: int
    end: int
    inside: bool
    where: Where


@dataclass(frozen=True)
class Weekday:
    """Local weekday of @timestamp is one of `days` (0 = Monday)."""

    days: frozenset[int]
    where: Where


Condition = FieldTest | AllOf | AnyOf | Not | MacroRef | TimeOfDay | Weekday


# ------------------------------------------------------------------ items


@dataclass(frozen=True)
class NamedList:
    """`lists: {name: [values]}` — e.g. allowed USB serials, departing users."""

    name: str
    values: tuple[object, ...]
    where: Where


@dataclass(frozen=True)
class Macro:
    """`macros: {name: condition}` — a reusable named condition."""

    name: str
    condition: Condition
    where: Where


@dataclass(frozen=True)
class Measure:
    """A threshold on a window: count of events, distinct values of a field, or sum of a field."""

    kind: Literal["count", "distinct", "sum"]
    field: str | None
    op: Literal["gte", "gt"]
    threshold: float
    where: Where


@dataclass(frozen=True)
class Coverage:
    """Share of a tag's files or bytes (from the agent's inventory) copied within the window."""

    of: Literal["files", "bytes"]
    op: Literal["gte", "gt"]
    threshold: float
    tags: tuple[str, ...] | None  # None: every tag in tag_field
    tag_field: str
    path_field: str
    size_field: str
    min_files: int
    where: Where


@dataclass(frozen=True)
class Aggregate:
    """Group matching events `by` fields over a sliding `window`; fire when any measure is reached."""

    by: tuple[str, ...]
    window: float
    measures: tuple[Measure, ...]
    coverage: Coverage | None
    where: Where


@dataclass(frozen=True)
class Step:
    """One step of a sequence."""

    name: str
    condition: Condition
    where: Where


@dataclass(frozen=True)
class Sequence:
    """Ordered steps, grouped `by` fields, all `within` a span from the first step."""

    by: tuple[str, ...]
    within: float
    steps: tuple[Step, ...]
    where: Where


@dataclass(frozen=True)
class PolicyException:
    """A named exception: either `fields` with rows of `values` (any row matching excepts the
    event; a value may be a list, meaning any of), or a `when` condition."""

    name: str
    fields: tuple[str, ...]
    values: tuple[tuple[object, ...], ...]
    condition: Condition | None
    where: Where


@dataclass(frozen=True)
class Suppress:
    """How repeats are folded: by these fields, within this window (None: the collector default)."""

    by: tuple[str, ...]
    window: float | None


@dataclass(frozen=True)
class Policy:
    """One policy: a `when` on single events, optionally an aggregate or a sequence on top."""

    id: str
    title: str
    severity: Severity
    description: str
    when: Condition | None  # None only for sequences (their steps carry the conditions)
    aggregate: Aggregate | None
    sequence: Sequence | None
    exceptions: tuple[PolicyException, ...]
    suppress: Suppress
    summary: str
    tags: tuple[str, ...]
    where: Where
    keys: tuple[str, ...] = ()  # the keys as written, in order (lint checks the order)
    summary_at: Where | None = None


@dataclass
class PolicySet:
    """Everything loaded from the configured policy paths, with a hash that alerts record."""

    policies: list[Policy] = field(default_factory=list)
    lists: dict[str, NamedList] = field(default_factory=dict)
    macros: dict[str, Macro] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # path -> raw content (for the hash)
    broken: list[Policy] = field(default_factory=list)  # policies with parse errors (lint only)

    def all_policies(self) -> list[Policy]:
        """Good and broken policies: what lint and validate look at."""
        return [*self.policies, *self.broken]

    @property
    def hash(self) -> str:
        """SHA-256 over the files' names and contents, in path order: which rules raised an alert."""
        digest = hashlib.sha256()
        # By file name, not full path: the same pack installed elsewhere has the same hash.
        for path in sorted(self.files, key=lambda p: (PurePath(p).name, p)):
            content = self.files[path]
            digest.update(f"{PurePath(path).name}\0{len(content)}\0".encode())
            digest.update(content)
        return digest.hexdigest()


def walk(condition: Condition) -> Iterator[Condition]:
    """Every node of a condition tree (macro references are not followed)."""
    yield condition
    if isinstance(condition, (AllOf, AnyOf)):
        for child in condition.children:
            yield from walk(child)
    elif isinstance(condition, Not):
        yield from walk(condition.child)


def policy_conditions(policy: Policy) -> Iterator[Condition]:
    """The roots of every condition a policy holds: when, sequence steps, exceptions."""
    if policy.when is not None:
        yield policy.when
    if policy.sequence:
        for step in policy.sequence.steps:
            yield step.condition
    for exc in policy.exceptions:
        if exc.condition is not None:
            yield exc.condition
