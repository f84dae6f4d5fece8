"""Layouts: a format's JSON for one shape of event, worked out once, then filled per event.

    data = Layouts(ocsf.event, shaped_by=("event.action", "file.type")).json(mapping)
    assert data == orjson.dumps(ocsf.event(mapping))

Forwarding turns every stored event into JSON; calling the format function and serialising
its nested document costs more than storing the event did. Events of one shape (the same
fields set, the same action) give documents that differ only in where their values go, so a
shape's document is worked out once, by calling the format function on two probes, and kept
as the JSON with holes: per event, each value is serialised into its hole.

The probes are the event's mapping with each str, int and float value replaced by a marker
(distinct in the two probes); any other value (bool, list, ...), a falsy value, and the value
of every key named in `shaped_by` (a format function branches on those values) are kept and
belong to the shape. A format function may pass a value to a function of it (epoch_ms, a
basename) through `derive(fn, value)`, which the layout then calls per event. In both
documents every leaf must be the same constant, or the markers of the same field, or a
derived marker; the structures must be equal. Otherwise (a value used in a way the layout
cannot repeat) the shape keeps the format function: the JSON is the same either way.
"""

from __future__ import annotations

import logging
import operator
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from common.errors import ExfilGuardError

CHECK_EVERY = 1_000  # one event in this many is also formatted by the function and compared
MAX_SHAPES = 2_000  # beyond it new shapes go the slow road (lists of tags make shapes; bounded)
# The kept values of a shape, as text, up to this long: a few tags make shapes worth laying out,
# an archive's members or a copy's sources (nearly every event a shape of its own) do not.
MAX_SHAPING_TEXT = 200

log = logging.getLogger("exfilguard.collector.formats")

_PROBE = threading.local()  # while a shape is worked out: its markers (see _Probe)

# A hole of a layout: the field's index in the mapping, and the function of its value (derive).
Hole = tuple[int, "Callable[[Any], Any] | None"]


class _Uncompilable(ExfilGuardError):
    """The shape's document cannot be cut into constants and holes: it keeps the format function."""


class _Probe:
    """One probe's markers: (type, marker) -> the hole it fills."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.fields: dict[tuple[type, Any], tuple[int, Any]] = {}  # marker -> (index, real value)
        self.holes: dict[tuple[type, Any], Hole] = {}
        self.derived = 0

    def mark(self, index: int, value: Any) -> Any:
        marker = _marker(value, index, self.side)
        if marker is not None:
            self.fields[(type(marker), marker)] = (index, value)
            self.holes[(type(marker), marker)] = (index, None)
        return marker

    def derive(self, fn: Callable[[Any], Any], value: Any) -> Any:
        if type(value) not in (str, int, float):
            return fn(value)
        found = self.fields.get((type(value), value))
        if found is None:
            return fn(value)
        index, real = found
        self.derived += 1
        marker = _marker(fn(real), _DERIVED_BASE + self.derived, self.side)
        if marker is None:
            raise _Uncompilable  # e.g. a derived list: not a leaf the layout can fill
        self.holes[(type(marker), marker)] = (index, fn)
        return marker


def derive(fn: Callable[[Any], Any], value: Any) -> Any:
    """`fn(value)`; in a probe, a marker that the layout fills with `fn` of the event's value."""
    probe: _Probe | None = getattr(_PROBE, "probe", None)
    if probe is None:
        return fn(value)
    return probe.derive(fn, value)


_DERIVED_BASE = 100_000  # marker numbers of derived values (a mapping has far fewer fields)


def _marker(real: Any, number: int, side: int) -> Any:
    """A value of `real`'s type that nothing else equals; None if the type cannot be marked."""
    kind = type(real)
    if kind is str:
        tag = f"{number}{'ab'[side]}"
        return f"\u2042{tag}/\u2042{tag}.\u2042{tag} \u2042{tag}"  # each piece differs between probes
    if kind is int:
        return 7_919_000_000_000_000 + number * 10 + side
    if kind is float:
        return 7_919_000_000_000.0 + number + side / 4
    return None


class Layout:
    """One shape's JSON with holes; `fill` serialises an event's values into them."""

    def __init__(self, template: bytes, keys: tuple[str, ...], derived: dict[int, Callable[[Any], Any]]):
        self.template = template
        self._getter = operator.itemgetter(*keys) if keys else None
        self._single = len(keys) == 1
        self._derived = derived  # hole number -> function of the field's value

    def fill(self, mapping: Mapping[str, Any]) -> bytes:
        """The event's JSON (the mapping must have this layout's shape)."""
        if self._getter is None:
            return self.template % ()
        values = self._getter(mapping)
        if self._single:
            values = (values,)
        if self._derived:
            values = list(values)
            for hole, fn in self._derived.items():
                values[hole] = fn(values[hole])
        # One orjson call for all the values (a call per value cost 90 ns each, 1.5 us an event):
        # every hole holds a str, int or float, so the array's commas outside strings are exactly
        # the separators, and a split into as many parts as values has cut only there. A comma in
        # a string (the split gives more parts) takes the call per value.
        parts = orjson.dumps(values)[1:-1].split(b",")
        if len(parts) == len(values):
            return self.template % tuple(parts)
        return self.template % tuple(map(orjson.dumps, values))


def compile_shape(
    fn: Callable[[Mapping[str, Any]], Any], mapping: Mapping[str, Any], kept: frozenset[str]
) -> Layout | None:
    """The layout of `mapping`'s shape under `fn`, or None when it cannot have one."""
    docs, probes = [], []
    for side in (0, 1):
        probe = _Probe(side)
        values = {}
        for index, (key, value) in enumerate(mapping.items()):
            marker = None if key in kept or not value else probe.mark(index, value)
            values[key] = value if marker is None else marker
        _PROBE.probe = probe
        try:
            docs.append(fn(values))
        except Exception:
            return None
        finally:
            _PROBE.probe = None
        probes.append(probe)
    holes: list[tuple[Hole, bytes]] = []
    try:
        _match(docs[0], docs[1], probes[0], probes[1], holes)
    except _Uncompilable:
        return None
    data = orjson.dumps(docs[0])
    texts = [text for _, text in holes]
    pieces = [data]
    if texts:
        pattern = b"(" + b"|".join(re.escape(t) for t in dict.fromkeys(texts)) + b")"
        pieces = re.split(pattern, data)
    if pieces[1::2] != texts:  # a marker's text also inside a constant: no place to cut
        return None
    template = b"%b".join(p.replace(b"%", b"%%") for p in pieces[0::2])
    keys = list(mapping)
    derived = {n: f for n, ((_, f), _) in enumerate(holes) if f is not None}
    return Layout(template, tuple(keys[index] for (index, _), _ in holes), derived)


def _match(a: Any, b: Any, probe_a: _Probe, probe_b: _Probe, holes: list[tuple[Hole, bytes]]) -> None:
    """Walk both documents in serialisation order, noting each hole; _Uncompilable where they differ."""
    if type(a) is not type(b):
        raise _Uncompilable
    if type(a) is dict:
        if list(a) != list(b):
            raise _Uncompilable
        for key in a:
            _match(a[key], b[key], probe_a, probe_b, holes)
        return
    if type(a) is list:
        if len(a) != len(b):
            raise _Uncompilable
        for x, y in zip(a, b, strict=True):
            _match(x, y, probe_a, probe_b, holes)
        return
    hole_a = probe_a.holes.get((type(a), a))
    hole_b = probe_b.holes.get((type(b), b))
    if hole_a is not None or hole_b is not None:
        if hole_a != hole_b:
            raise _Uncompilable
        holes.append((hole_a, orjson.dumps(a)))  # type: ignore[arg-type]
        return
    if a != b:  # a leaf that depends on a value in a way the layout cannot repeat
        raise _Uncompilable


class Layouts:
    """The layouts of one format function, by shape; `json(mapping)` is orjson.dumps(fn(mapping))."""

    def __init__(self, fn: Callable[[Mapping[str, Any]], Any], shaped_by: tuple[str, ...] = ()) -> None:
        self.fn = fn
        self.shaped_by = frozenset(shaped_by)
        self._plans: dict[tuple[str, ...], Callable[[Mapping[str, Any]], Any]] = {}
        self._layouts: dict[Any, Layout | None] = {}
        self._lock = threading.Lock()
        self._count = 0
        self.name = getattr(fn, "__module__", "?").rsplit(".", 1)[-1]

    def json(self, mapping: Mapping[str, Any]) -> bytes:
        """The event in this format, as JSON bytes."""
        names = tuple(mapping)
        kept = self._plans.get(names)
        if kept is None:
            kept = self._plan(mapping, names)
        values = mapping.values()
        falsy = None if all(values) else tuple(None if v else repr(v) for v in values)
        shaping = kept(mapping)
        if shaping is not None and len(shaping) > MAX_SHAPING_TEXT:
            return orjson.dumps(self.fn(mapping))  # a list of files or members: a shape of its own
        shape = (names, shaping, falsy)
        layout = self._layouts.get(shape, _UNSEEN)
        if layout is _UNSEEN:
            if len(self._layouts) >= MAX_SHAPES:
                return orjson.dumps(self.fn(mapping))
            layout = self._learn(shape, mapping)
        if layout is None:
            return orjson.dumps(self.fn(mapping))
        self._count += 1
        if self._count % CHECK_EVERY:
            return layout.fill(mapping)
        return self._check(shape, layout, mapping)

    def _check(self, shape: Any, layout: Layout, mapping: Mapping[str, Any]) -> bytes:
        """Now and then the function's own JSON, compared: a branch on a value not in `shaped_by`
        (a mistake in a format function) sends the shape down the slow road, logged once."""
        data = orjson.dumps(self.fn(mapping))
        if layout.fill(mapping) != data:
            log.error(
                "a %s layout gave other JSON than its function: that shape is not laid out again", self.name
            )
            self._layouts[shape] = None
        return data

    def _plan(self, mapping: Mapping[str, Any], names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
        # The values that are part of a shape: those the function branches on, and those of a type
        # without markers (a field's type is fixed by the .proto, so its name tells).
        kept = [k for k, v in mapping.items() if k in self.shaped_by or _marker(v, 0, 0) is None]
        plan: Callable[[Mapping[str, Any]], Any] = lambda m: None  # noqa: E731
        if kept:
            getter = operator.itemgetter(*kept)
            plan = lambda m: repr(getter(m))  # noqa: E731 - lists are not hashable; their text is
            if all(_json_keyed(mapping[k]) for k in kept):
                # orjson's text (a third of repr's cost) tells these values apart as repr does;
                # not floats (NaN and infinities are all null) nor repeated messages.
                plan = lambda m: orjson.dumps(getter(m))  # noqa: E731
        if len(self._plans) < MAX_SHAPES:
            self._plans[names] = plan
        return plan

    def _learn(self, shape: Any, mapping: Mapping[str, Any]) -> Layout | None:
        kept = frozenset(k for k, v in mapping.items() if k in self.shaped_by or _marker(v, 0, 0) is None)
        with self._lock:
            layout = compile_shape(self.fn, mapping, kept)
            if layout is not None and layout.fill(mapping) != orjson.dumps(self.fn(mapping)):
                layout = None  # this event's values take another branch than the probes' did
            self._layouts[shape] = layout
        return layout


_UNSEEN = Layout(b"", (), {})  # a shape not seen yet


def _json_keyed(value: Any) -> bool:
    """True if orjson's text of the field's values is one to one (a field's type, and a list's
    element type, is fixed by the .proto: one value tells)."""
    if type(value) is list:
        return bool(value) and type(value[0]) in (str, int, bool)
    return type(value) in (str, int, bool)
