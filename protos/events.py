"""The one conversion from a protobuf `Event` to the dotted ECS mapping.

Policies, alerts and exports all read events through `to_mapping`; nothing else
walks protobuf fields, so the `.proto` file stays the only declaration of the model.
"""

from __future__ import annotations

import datetime as dt
import keyword
import math
import operator
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, Literal, NamedTuple, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from common.ecstime import ECS_SECONDS
from common.errors import ExfilGuardError
from protos import exfilguard_pb2 as pb

Event = pb.Event

# protobuf cannot name a field "@timestamp"; ECS does.
_RENAMED = {"timestamp": "@timestamp"}

Mapping = dict[str, Any]

# Where to_mapping describes what it could not convert (never set for events ingest accepted).
INVALID = "exfilguard.invalid"


class TimestampError(ExfilGuardError, ValueError):
    """A protobuf Timestamp that no ISO time string can express (nanos or year out of range)."""


def timestamp_to_iso(ts: Timestamp) -> str:
    """ECS form of a timestamp: UTC, microseconds, trailing Z; TimestampError if it has none."""
    seconds, nanos = ts.seconds, ts.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise TimestampError(f"seconds={seconds} nanos={nanos}: nanos outside 0..999999999")
    try:
        head = seconds_text(seconds)
    except (ValueError, OverflowError, OSError) as exc:  # which one depends on how far out
        raise TimestampError(f"seconds={seconds} nanos={nanos}: outside years 1..9999 ({exc})") from exc
    return f"{head}{nanos // 1000:06d}Z"


def seconds_text(seconds: int) -> str:
    """The ECS time of whole epoch `seconds` up to its microseconds ("2026-01-31T08:15:00.").

    Formatting a datetime is most of what converting a timestamp costs, and events come in
    bursts within the same second: the text is cached (bounded). ValueError, OverflowError or
    OSError outside years 1..9999.
    """
    head = _SECONDS_TEXT.get(seconds)
    if head is None:
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        if len(_SECONDS_TEXT) >= 4096:
            _SECONDS_TEXT.clear()
        head = _SECONDS_TEXT[seconds] = moment.strftime(ECS_SECONDS)
    return head


_SECONDS_TEXT: dict[int, str] = {}


def to_mapping(event: Message) -> Mapping:
    """Flatten an event to `{"@timestamp": ..., "event.action": ..., "file.size": ...}`.

    Only fields that are set appear; repeated scalars become lists, repeated
    messages lists of flat dicts. Never raises: a timestamp no ISO string can express
    (only in stores written before ingest checked them) is left out and described under
    `exfilguard.invalid`, a list of "field: problem" texts, so every reader treats it alike.
    """
    if type(event) is pb.Event:
        try:
            return _event_mapping(event)
        except TimestampError:
            pass  # described under exfilguard.invalid by the walk
    return walk_mapping(event)


def walk_mapping(event: Message) -> Mapping:
    """`to_mapping` by walking ListFields (any message; the reference the Event's code is held to)."""
    out: Mapping = {}
    _flatten(event.ListFields(), _ROOT_PLANS, "", out)
    return out


def field_mapping(field: FieldDescriptor, value: Any) -> Mapping:
    """What `to_mapping` writes for one field of an Event, as `ListFields()` gives it (a message's
    fields flattened under its name): the mapping of an event is the union of its fields' ones."""
    out: Mapping = {}
    _flatten(((field, value),), _ROOT_PLANS, "", out)
    return out


# How each field is flattened, decided once per field path rather than per event: reading
# descriptor attributes costs more than the conversion itself. Descriptors are interned, so
# each prefix's table holds one entry per field of its message; a message's plan carries the
# table of its own fields, so nothing is looked up by path per event.
_SCALAR, _MESSAGE, _TIMESTAMP, _REPEATED, _REPEATED_MESSAGE = range(5)
_Plan = tuple[str, int, "dict[FieldDescriptor, Any]", str]
_ROOT_PLANS: dict[FieldDescriptor, _Plan] = {}


def _plan(plans: dict[FieldDescriptor, _Plan], prefix: str, field: FieldDescriptor) -> _Plan:
    name = ecs_name(prefix, field)
    if is_timestamp(field):
        kind = _TIMESTAMP
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        kind = _REPEATED_MESSAGE if _is_repeated(field) else _MESSAGE
    elif _is_repeated(field):
        kind = _REPEATED
    else:
        kind = _SCALAR
    plan = plans[field] = (name, kind, {}, name + ".")
    return plan


def _flatten(
    fields: Iterable[tuple[FieldDescriptor, Any]],
    plans: dict[FieldDescriptor, _Plan],
    prefix: str,
    out: Mapping,
) -> None:
    for field, value in fields:
        plan = plans.get(field)
        if plan is None:
            plan = _plan(plans, prefix, field)
        name, kind, children, child_prefix = plan
        if kind == _SCALAR:
            out[name] = value
        elif kind == _MESSAGE:
            _flatten(value.ListFields(), children, child_prefix, out)
        elif kind == _TIMESTAMP:
            try:
                out[name] = timestamp_to_iso(value)
            except TimestampError as exc:
                out.setdefault(INVALID, []).append(f"{name}: {exc}")
        elif kind == _REPEATED:
            out[name] = list(value)
        else:
            out[name] = [to_mapping(item) for item in value]


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


# -- the model's fields, read off the .proto: the one walker of its descriptors


def ecs_name(prefix: str, field: FieldDescriptor) -> str:
    """The dotted name `to_mapping` gives `field` under `prefix` ("file." + "path"; "@timestamp")."""
    return prefix + field.name if prefix else _RENAMED.get(field.name, field.name)


def is_timestamp(field: FieldDescriptor) -> bool:
    """True for a google.protobuf.Timestamp field (`to_mapping` writes it as an ECS time string)."""
    return field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp"


# Reading a field through upb costs ~70 ns; ListFields ~0.3 us per field it lists, and the
# generic walk a dictionary lookup and a branch per field: an Event is read by straight-line code
# written once from its descriptor (its fields in .proto order, which is also field-number order,
# as ListFields lists them), 8 -> 6 us an event; tests/test_events.py holds it to the walk.

_FLOATS = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)


def mapping_lines(
    fields: Sequence[FieldDescriptor], holder: str, prefix: str, depth: int, out: list[str]
) -> None:
    """Source lines that set `d[name] = value` for what to_mapping writes of `fields`, in its order,
    read from the variable `holder` (indented by `depth`); a timestamp no ISO time expresses raises
    TimestampError (the caller then takes ListFields' path). The generated code's names: `_iso`
    (timestamp_to_iso), `_to_mapping`, `_copysign` (math.copysign)."""
    pad = " " * depth
    for field in fields:
        name = repr(ecs_name(prefix, field))
        attribute = f"getattr({holder}, {field.name!r})" if keyword.iskeyword(field.name) else None
        read = attribute or f"{holder}.{field.name}"
        has = f"{holder}.HasField({field.name!r})"
        if is_timestamp(field):
            if field.is_repeated:
                raise TypeError(f"{name}: a repeated Timestamp has no ECS form")
            out.append(f"{pad}if {has}: d[{name}] = _iso({read})")
        elif field.message_type is not None and field.is_repeated:
            out += [f"{pad}v = {read}", f"{pad}if v: d[{name}] = [_to_mapping(item) for item in v]"]
        elif field.message_type is not None:
            inner = f"m{depth}"
            out += [f"{pad}if {has}:", f"{pad} {inner} = {read}"]
            mapping_lines(field.message_type.fields, inner, ecs_name(prefix, field) + ".", depth + 1, out)
        elif field.is_repeated:  # v[:] is a list, made in upb's C (list(v) iterates: 3x the cost)
            out += [f"{pad}v = {read}", f"{pad}if v: d[{name}] = v[:]"]
        elif field.has_presence:
            out.append(f"{pad}if {has}: d[{name}] = {read}")
        elif field.cpp_type in _FLOATS:  # proto3 lists -0.0 as set (its bits are not zero)
            out += [f"{pad}v = {read}", f"{pad}if v or _copysign(1.0, v) < 0: d[{name}] = v"]
        else:
            out += [f"{pad}v = {read}", f"{pad}if v: d[{name}] = v"]


class ModelField(NamedTuple):
    """One field of the event model as `to_mapping` names it, with its proto descriptor."""

    name: str
    field: FieldDescriptor
    # timestamp: an ECS time string; message: a singular message, flattened into the fields that
    # follow it (named name + "."); messages: a list of flat dicts; scalar: a value or a list of them
    kind: Literal["scalar", "timestamp", "message", "messages"]

    @property
    def repeated(self) -> bool:
        """True when the mapping holds a list for this field."""
        return bool(self.field.is_repeated)


def model_fields(descriptor: Descriptor | None = None, prefix: str = "") -> Iterator[ModelField]:
    """Every field of `descriptor` (default: the Event) in .proto order, as `to_mapping` names it;
    a singular message comes first, then its own fields (depth first)."""
    for field in cast(Descriptor, descriptor or pb.Event.DESCRIPTOR).fields:
        name = ecs_name(prefix, field)
        if is_timestamp(field):
            yield ModelField(name, field, "timestamp")
        elif field.type != FieldDescriptor.TYPE_MESSAGE:
            yield ModelField(name, field, "scalar")
        elif field.is_repeated:
            yield ModelField(name, field, "messages")
        else:
            yield ModelField(name, field, "message")
            yield from model_fields(field.message_type, name + ".")


# ------------------------------------------------------------------ lazy view

_ABSENT: Any = object()  # a field to_mapping leaves out
_UNREAD: Any = object()
Reader = Callable[[Message], Any]


class EventView(MutableMapping[str, Any]):
    """The dotted mapping of an event, converted one field at a time as it is read.

    Every read gives what `to_mapping(event)` holds under that name (absent fields read as
    absent), but only the fields a reader asks for are converted: the policy engine reads
    a handful of an event's fields, and converting all of them cost more than evaluating.
    Iterating, `len` and `dict(view)` convert the whole event once. Fields set on the view
    (the collector's enrichment) are added on top; the event itself is never changed.
    """

    __slots__ = ("_added", "_full", "_values", "event")

    def __init__(self, event: Message) -> None:
        self.event = event
        self._values: dict[str, Any] = {}
        self._added: dict[str, Any] = {}
        self._full: Mapping | None = None

    def get(self, name: str, default: Any = None) -> Any:
        """The field's value as to_mapping has it, or `default` when it has none."""
        value = self._values.get(name, _UNREAD)
        if value is _UNREAD:
            reader = _READERS.get(name)
            value = reader(self.event) if reader is not None else self._rest(name)
            self._values[name] = value
        return default if value is _ABSENT else value

    def _rest(self, name: str) -> Any:
        # Not a field of the schema: only exfilguard.invalid, which needs the whole event.
        return self.mapping().get(name, _ABSENT) if name == INVALID else _ABSENT

    def __getitem__(self, name: str) -> Any:
        value = self.get(name, _ABSENT)
        if value is _ABSENT:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, _ABSENT) is not _ABSENT

    def __setitem__(self, name: str, value: Any) -> None:
        self._added[name] = value
        self._values[name] = value
        if self._full is not None:
            self._full[name] = value

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"{name}: fields of a stored event cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self.mapping())

    def __len__(self) -> int:
        return len(self.mapping())

    def mapping(self) -> Mapping:
        """The whole mapping (to_mapping plus the fields set on the view), built once."""
        if self._full is None:
            self._full = to_mapping(self.event)
            self._full.update(self._added)
        return self._full

    def with_fields(self, added: dict[str, Any]) -> EventView:
        """A view of the same event with `added` set on it (those set on this one kept); this one
        is left as it is."""
        twin: EventView = object.__new__(EventView)  # not __init__: half the cost (one per event)
        twin.event, twin._full = self.event, None
        twin._values, twin._added = {**self._values, **added}, {**self._added, **added}
        return twin

    def detached(self) -> EventView:
        """A view of a copy of the event (not the parsed batch it is part of) with the fields set here."""
        return EventView(type(self.event).FromString(self.event.SerializeToString())).with_fields(self._added)

    def epoch(self) -> float | None:
        """@timestamp as epoch seconds at microsecond precision (what parsing its ECS text gives);
        None without one."""
        stamp: Timestamp = cast(Any, self.event).timestamp  # HasField costs a read: asked of a zero time only
        seconds, nanos = stamp.seconds, stamp.nanos
        if not (seconds or nanos) and not self.event.HasField("timestamp"):
            return None
        return float(seconds) + (nanos // 1000) / 1e6


def _readers(within: str = "") -> dict[str, Reader]:
    """One reader per dotted name to_mapping can produce (model_fields, the one walker), built once;
    with `within` (a top-level message's name), those of its names, reading from that message."""
    out: dict[str, Reader] = {}
    inside = within + "." if within else ""
    for model in model_fields():
        if model.kind == "message" or not model.name.startswith(inside):
            continue  # a message is flattened: its own fields follow
        field = model.field
        attr = field.name if model.name in _RENAMED.values() else model.name  # only top-level names change
        attr = attr[len(inside) :]
        path, _, name = attr.rpartition(".")
        if model.kind == "timestamp":
            out[model.name] = _timestamp_reader(path, name)
        elif model.repeated:
            out[model.name] = _repeated_reader(attr, model.kind == "messages")
        elif field.has_presence:
            out[model.name] = _present_reader(path, name)
        else:
            floats = field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)
            out[model.name] = _scalar_reader(attr, floats)
    return out


def _parent(path: str) -> Callable[[Message], Message]:
    return operator.attrgetter(path) if path else (lambda event: event)


def _timestamp_reader(path: str, name: str) -> Reader:
    parent = _parent(path)
    value = operator.attrgetter(name)

    def read(event: Message) -> Any:
        holder = parent(event)
        if not holder.HasField(name):
            return _ABSENT
        try:
            return timestamp_to_iso(value(holder))
        except TimestampError:  # described under exfilguard.invalid, as to_mapping does
            return _ABSENT

    return read


def _present_reader(path: str, name: str) -> Reader:
    parent = _parent(path)
    value = operator.attrgetter(name)

    def read(event: Message) -> Any:
        holder = parent(event)
        return value(holder) if holder.HasField(name) else _ABSENT

    return read


def _scalar_reader(attr: str, float_kind: bool) -> Reader:
    value = operator.attrgetter(attr)
    if float_kind:  # proto3 lists -0.0 as set (its bits are not zero)

        def read_float(event: Message) -> Any:
            v = value(event)
            return v if v or math.copysign(1.0, v) < 0 else _ABSENT

        return read_float

    def read(event: Message) -> Any:
        v = value(event)
        return v if v else _ABSENT

    return read


def _repeated_reader(attr: str, messages: bool) -> Reader:
    value = operator.attrgetter(attr)

    def read(event: Message) -> Any:
        items = value(event)
        if not items:
            return _ABSENT
        return [to_mapping(item) for item in items] if messages else list(items)

    return read


_READERS = _readers()


def message_reader(within: str) -> Callable[[Message], Mapping]:
    """What `to_mapping` writes for the top-level message field `within` ("process"), read from that
    message field by field as `EventView` reads (a timestamp no ISO time expresses reads as absent)."""
    readers = tuple(_readers(within).items())

    def read(message: Message) -> Mapping:
        out: Mapping = {}
        for name, reader in readers:
            value = reader(message)
            if value is not _ABSENT:
                out[name] = value
        return out

    return read


def read_fields(event: Message, names: Iterable[str]) -> Mapping:
    """What `to_mapping(event)` holds under `names` (those it has), each read on its own as `EventView`
    reads it: no walk of the whole event. A timestamp no ISO time expresses reads as absent."""
    out: Mapping = {}
    for name in names:
        value = _READERS[name](event)
        if value is not _ABSENT:
            out[name] = value
    return out


def now() -> Timestamp:
    """The current time as a protobuf Timestamp (UTC, microsecond precision)."""
    # from the clock's nanoseconds: a datetime and its conversion cost more than the rest of
    # an agent's event together
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos - nanos % 1000)


class _EventIds:
    """Random (version 4) UUIDs as text, made 256 at a time from one read of the kernel's
    random bytes and handed out one by one (uuid.uuid4() reads 16 bytes per id: a system call
    per event; spelling each id alone cost 3 us, more than the rest of an event's fields). A
    forked child drops its parent's ids (it would repeat them) and makes its own."""

    def __init__(self, per_read: int = 256) -> None:
        self._per_read = per_read
        self._lock = threading.Lock()
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._ids.clear)

    def next(self) -> str:
        """A fresh id, as str(uuid.uuid4()) spells one."""
        while True:
            try:
                return self._ids.pop()  # atomic: no lock on the way of every event
            except IndexError:
                with self._lock:
                    if not self._ids:
                        self._ids.extend(_uuid4_texts(self._per_read))


def _uuid4_texts(count: int) -> list[str]:
    """`count` random version 4 UUIDs spelled as str(uuid.uuid4()) does."""
    text = os.urandom(16 * count).hex()
    variant = "89ab89ab89ab89ab"  # the RFC 4122 variant: the top two bits of byte 8 are 10
    return [f"{text[at:at + 8]}-{text[at + 8:at + 12]}-4{text[at + 13:at + 16]}-"
            f"{variant[int(text[at + 16], 16)]}{text[at + 17:at + 20]}-{text[at + 20:at + 32]}"
            for at in range(0, 32 * count, 32)]


_event_ids = _EventIds()
_HOST_SECONDS = 5.0  # a renamed host is named so within this long
_host: list[Any] = ["", -math.inf]  # (name, monotonic time read)


def _host_name() -> str:
    # a system call per event was a tenth of the agent's work per file event
    moment = time.monotonic()
    if moment - _host[1] >= _HOST_SECONDS:
        _host[:] = [socket.gethostname(), moment]
    return str(_host[0])


def sibling_event(event: pb.Event, action: str) -> pb.Event:
    """A copy of `event` (not yet emitted) with its own id and another action: one access the
    kernel reported as two (an open and its close) costs one event built, not two."""
    out = pb.Event()
    out.CopyFrom(event)
    out.event.id = _event_ids.next()
    out.event.action = action
    return out


def fs_text(text: str) -> str:
    """`text` (a path, program or name from the kernel) as a protobuf string can hold it.

    Python decodes a file name that is not UTF-8 with lone surrogates (os.fsdecode), which
    protobuf refuses: an insider naming a file `secret\xff.csv` would make every event about it
    fail to build. Such bytes are written as the four characters `\\xff` (backslashreplace);
    everything else, ASCII in particular, is returned as it is.
    """
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no file name decodes to: \udXXX
            return text.encode("utf-8", "backslashreplace").decode()
    return text


def fs_texts(texts: Iterable[str]) -> list[str]:
    """`fs_text` of each of `texts`."""
    return [fs_text(text) for text in texts]


def new_event(action: str, **fields: Any) -> pb.Event:
    """A fresh event with id, time, host and action set; sequence and agent come from the spool.

    `fields` are keyword arguments for `pb.Event` (e.g. file=pb.File(path=...)).
    """
    return stamped(pb.Event(**fields) if fields else pb.Event(), action)


def stamped(event: pb.Event, action: str) -> pb.Event:
    """`event` (fresh, perhaps filled from fields it shares with others) with its own id and
    `action`, and the kind, time and host `new_event` gives unless it has them; returned."""
    head = event.event
    head.id = _event_ids.next()
    head.action = action
    if not head.kind:
        head.kind = "event"
    if not event.HasField("timestamp"):
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)  # as now(), without a message
        stamp = event.timestamp
        stamp.seconds = seconds
        stamp.nanos = nanos - nanos % 1000
    if not event.host.name:
        event.host.name = _host_name()
    return event


# A message of the Event with this many fields or more (`exfilguard`, `device`) is read through
# ListFields and the walk's plans: an event sets few of them, and reading each (with HasField for
# its messages) cost more than listing the set ones (`exfilguard` of a file event: 1.2 -> 0.5 us).
WIDE_FIELDS = 8


def _wide_reader(field: FieldDescriptor) -> Callable[[Message, Mapping], None]:
    """Flattens a message of `field` into a mapping as the walk does (a bad timestamp described
    under INVALID, as the walk of the whole event would)."""
    _, _, children, child_prefix = _ROOT_PLANS.get(field) or _plan(_ROOT_PLANS, "", field)

    def read(message: Message, out: Mapping) -> None:
        _flatten(message.ListFields(), children, child_prefix, out)

    return read


def _compile_event_mapping() -> Callable[[Message], Mapping]:
    """The Event's to_mapping as straight-line code, written out from its descriptor."""
    scope: dict[str, Any] = {"_iso": timestamp_to_iso, "_to_mapping": to_mapping, "_copysign": math.copysign}
    descriptor = cast(Descriptor, pb.Event.DESCRIPTOR)
    lines = ["def event_mapping(e):", " d = {}"]
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        message = field.message_type
        if message is None or field.is_repeated or is_timestamp(field) or len(message.fields) < WIDE_FIELDS:
            mapping_lines((field,), "e", "", 1, lines)
            continue
        scope[f"_wide_{field.name}"] = _wide_reader(field)
        lines.append(f" if e.HasField({field.name!r}): _wide_{field.name}(e.{field.name}, d)")
    lines.append(" return d")
    exec("\n".join(lines), scope)  # noqa: S102 (source written above from the descriptor)
    function: Callable[[Message], Mapping] = scope["event_mapping"]
    return function


_event_mapping = _compile_event_mapping()
# to_mapping of an Event by that code alone (no wrapper's call: a batch reader calls it per row):
# TimestampError, or exfilguard.invalid set, where to_mapping would describe a field it cannot take.
event_mapping: Callable[[Message], Mapping] = _event_mapping
