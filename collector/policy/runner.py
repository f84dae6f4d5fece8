"""What a policy does with an event it matched (its `when`, no exception), as one closure built at load.

    run = runner.build(window=..., steps=..., by=..., plain_key=..., inventory=...)
    firings = run(event, now)          # () nearly always; a Firing when a threshold is reached

The engine calls it for every matching event of every policy: the window kind and the group key
are settled once here, not looked up per event (the key of the usual
one or two `by` fields is built without a loop).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from collector.policy.conditions import EventFields, Predicate
from collector.policy.fields import CHEAP_FIELDS, reader
from collector.policy.windows import (
    AggregateWindow,
    CoverageWindow,
    Firing,
    Inventory,
    SequenceWindow,
    group_value,
)

Runner = Callable[[EventFields, float], Sequence[Firing]]
NOTHING: tuple[Firing, ...] = ()


def nothing(_event: EventFields, _now: float) -> Sequence[Firing]:
    """A policy that fires on nothing (before `build`)."""
    return NOTHING


def key_of(by: tuple[str, ...], plain: bool) -> Callable[[EventFields], tuple[Any, ...]]:
    """The group key of an event: its `by` values (lists as tuples unless `plain`: none is one).
    Fields the enrichment has at hand are read from the event mapping, others with fields.reader."""
    if not plain:
        return lambda e: tuple([group_value(e.get(f)) for f in by])
    if len(by) == 1:
        (only,) = by
        if only in CHEAP_FIELDS:
            return lambda e: (e.get(only),)
        read = reader(only)
        return lambda e: (read(e),)
    if len(by) == 2:  # the usual agent and user, or user and device
        first, second = by
        one, two = reader(first), reader(second)
        if first in CHEAP_FIELDS and second in CHEAP_FIELDS:
            return lambda e: (e.get(first), e.get(second))
        if first in CHEAP_FIELDS:
            return lambda e: (e.get(first), two(e))
        if second in CHEAP_FIELDS:
            return lambda e: (one(e), e.get(second))
        return lambda e: (one(e), two(e))
    readers = tuple(reader(f) for f in by)
    return lambda e: tuple([read(e) for read in readers])


_event_id = reader("event.id", "")


def build(
    *,
    window: AggregateWindow | CoverageWindow | SequenceWindow | None,
    steps: tuple[Predicate, ...],
    by: tuple[str, ...],
    plain_key: bool,
    inventory: Mapping[tuple[str, str], Inventory],
) -> Runner:
    """The firings of an event the policy matched (`inventory`: the engine's, read live)."""
    key = key_of(by, plain_key)
    if isinstance(window, SequenceWindow):
        numbered, advance = tuple(enumerate(steps)), window.add

        def sequence(event: EventFields, now: float) -> Sequence[Firing]:
            matched: list[int] = []
            for i, step in numbered:  # a loop: a generator is a frame more per event
                if step(event):
                    matched.append(i)
            if not matched:
                return NOTHING
            fired = advance(key(event), now, str(_event_id(event)), event, frozenset(matched))
            return (fired,) if fired else NOTHING

        return sequence
    if isinstance(window, AggregateWindow):
        count = window.add

        def aggregate(event: EventFields, now: float) -> Sequence[Firing]:
            fired = count(key(event), now, str(_event_id(event)), event)
            return (fired,) if fired else NOTHING

        return aggregate
    if isinstance(window, CoverageWindow):
        cover = window.add

        def coverage(event: EventFields, now: float) -> Sequence[Firing]:
            agent = str(event.get("agent.id", ""))
            event_id = str(_event_id(event))
            return cover(key(event), now, event_id, event, lambda tag: inventory.get((agent, tag)))

        return coverage

    def single(event: EventFields, now: float) -> Sequence[Firing]:
        event_id = str(_event_id(event))
        return (Firing(key(event), event, 1, [event_id] if event_id else [], {}, now, now),)

    return single
