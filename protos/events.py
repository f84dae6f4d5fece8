"""The one conversion from a protobuf `Event` to the dotted ECS mapping.

Policies, alerts and exports all read events through `to_mapping`; nothing else
walks protobuf fields, so the `.proto` file stays the only declaration of the model.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

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
    # Formatting a datetime is most of to_mapping's cost, and events come in bursts within
    # the same second: the part up to the seconds is cached (bounded).
    head = _SECONDS_TEXT.get(seconds)
    if head is None:
        try:
            moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        except (ValueError, OverflowError, OSError) as exc:  # which one depends on how far out
            raise TimestampError(f"seconds={seconds} nanos={nanos}: outside years 1..9999 ({exc})") from exc
        if len(_SECONDS_TEXT) >= 4096:
            _SECONDS_TEXT.clear()
        head = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _SECONDS_TEXT[seconds] = head
    return f"{head}{nanos // 1000:06d}Z"


_SECONDS_TEXT: dict[int, str] = {}


def to_mapping(event: Message) -> Mapping:
    """Flatten an event to `{"@timestamp": ..., "event.action": ..., "file.size": ...}`.

    Only fields that are set appear; repeated scalars become lists, repeated
    messages lists of flat dicts. Never raises: a timestamp no ISO string can express
    (only in stores written before ingest checked them) is left out and described under
    `exfilguard.invalid`, a list of "field: problem" texts, so every reader treats it alike.
    """
    out: Mapping = {}
    _flatten(event, "", out)
    return out


# How each field is flattened, decided once per (prefix, field) rather than per event: reading
# descriptor attributes costs more than the conversion itself. Descriptors are interned, so
# this holds one entry per field path of the schema.
_SCALAR, _MESSAGE, _TIMESTAMP, _REPEATED, _REPEATED_MESSAGE = range(5)
_PLANS: dict[tuple[str, FieldDescriptor], tuple[str, int, str]] = {}


def _plan(prefix: str, field: FieldDescriptor) -> tuple[str, int, str]:
    name = ecs_name(prefix, field)
    if is_timestamp(field):
        kind = _TIMESTAMP
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        kind = _REPEATED_MESSAGE if _is_repeated(field) else _MESSAGE
    elif _is_repeated(field):
        kind = _REPEATED
    else:
        kind = _SCALAR
    plan = _PLANS[(prefix, field)] = (name, kind, name + ".")
    return plan


def _flatten(message: Message, prefix: str, out: Mapping) -> None:
    plans = _PLANS
    for field, value in message.ListFields():
        plan = plans.get((prefix, field))
        if plan is None:
            plan = _plan(prefix, field)
        name, kind, child_prefix = plan
        if kind == _SCALAR:
            out[name] = value
        elif kind == _MESSAGE:
            _flatten(value, child_prefix, out)
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


def now() -> Timestamp:
    """The current time as a protobuf Timestamp (UTC, microsecond precision)."""
    # from the clock's nanoseconds: a datetime and its conversion cost more than the rest of
    # an agent's event together
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos - nanos % 1000)


class _EventIds:
    """Random (version 4) UUIDs as text, cut from one read of the kernel's random bytes per
    256 ids (uuid.uuid4() reads 16 bytes per id: a system call per event). A child process
    reads its own bytes (a forked copy of the pool would repeat its parent's ids)."""

    def __init__(self, per_read: int = 256) -> None:
        self._size = 16 * per_read
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        self._pid = 0

    def next(self) -> str:
        """A fresh id, as str(uuid.uuid4()) spells one."""
        with self._lock:
            if self._at >= len(self._pool) or self._pid != os.getpid():
                self._pool, self._at, self._pid = os.urandom(self._size), 0, os.getpid()
            raw = bytearray(self._pool[self._at : self._at + 16])
            self._at += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        text = raw.hex()
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_event_ids = _EventIds()


def new_event(action: str, **fields: Any) -> pb.Event:
    """A fresh event with id, time, host and action set; sequence and agent come from the spool.

    `fields` are keyword arguments for `pb.Event` (e.g. file=pb.File(path=...)).
    """
    event = pb.Event(**fields)
    event.event.id = _event_ids.next()
    event.event.action = action
    event.event.kind = event.event.kind or "event"
    if not event.HasField("timestamp"):
        event.timestamp.CopyFrom(now())
    if not event.host.name:
        event.host.name = socket.gethostname()
    return event
