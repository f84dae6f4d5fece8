"""The per-agent hash chain over events in sequence order.

    record = SHA-256(canonical(event mapping))
    link_n = SHA-256(link_{n-1} || record_n),  link_0 = 32 zero bytes

The chain is over the dotted ECS mapping (what exports contain), not protobuf bytes,
so `verify` can recompute it offline from an export alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, cast

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from protos import exfilguard_pb2 as pb
from protos.events import (
    INVALID,
    TimestampError,
    ecs_name,
    field_mapping,
    is_timestamp,
    message_reader,
    model_fields,
    read_fields,
    timestamp_to_iso,
)

GENESIS = bytes(32)

# Chain columns travel with exported records but are not part of what is hashed.
CHAIN_FIELDS = ("exfilguard.chain.hash", "exfilguard.chain.prev")


# The definition: json.dumps with sorted keys, no spaces, not ASCII-escaped. Built once (json.dumps
# with non-default options builds a new encoder on every call).
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_SORTED = orjson.OPT_SORT_KEYS


def canonical_text(mapping: dict[str, Any]) -> str:
    """`canonical` before UTF-8 encoding (exports write it as text)."""
    return canonical(mapping).decode()


def canonical(mapping: dict[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8, chain fields left out."""
    if any(name in mapping for name in CHAIN_FIELDS):
        mapping = {k: v for k, v in mapping.items() if k not in CHAIN_FIELDS}
    return canonical_body(mapping)


def canonical_body(body: dict[str, Any]) -> bytes:
    """`canonical` of a mapping already without chain fields.

    Built by orjson (several times faster) wherever it gives the very bytes of the definition,
    which tests/test_chain_canonical.py checks over a corpus that sets every field of the schema:
    both sort keys by code point, escape the same characters the same way and write the same
    shortest round-trip digits, except for floats Python writes with an exponent (1e-05, orjson
    0.00001) or that are not finite (NaN, Infinity; orjson null). A mapping holding such a float,
    or anything else orjson refuses (an integer beyond 64 bits, a surrogate, a non-string key),
    is encoded by the definition itself.
    """
    return sorted_json(body)


def sorted_json(value: Any) -> bytes:
    """Any JSON value as the definition writes it (sorted keys, no spaces, UTF-8): orjson where it agrees."""
    if _orjson_agrees((value,)):
        try:
            return orjson.dumps(value, option=_SORTED)
        except orjson.JSONEncodeError:
            pass
    return _ENCODE(value).encode()


def canonical_event(mapping: dict[str, Any]) -> bytes:
    """`canonical_body` of a mapping made by `protos.events.to_mapping` (stored events: the sealer,
    exports): the same bytes, found faster, as floats can only be where the model has them."""
    if event_floats_agree(mapping):
        try:
            return orjson.dumps(mapping, option=_SORTED)
        except orjson.JSONEncodeError:
            pass
    return _ENCODE(mapping).encode()


def event_floats_agree(mapping: dict[str, Any]) -> bool:
    """True when orjson writes every float of a `to_mapping` mapping as json does (see canonical_body)."""
    for name in _FLOAT_FIELDS:
        value = mapping.get(name)
        if value is not None and not _orjson_agrees((value,)):
            return False
    return True


def event_link(prev: bytes, mapping: dict[str, Any]) -> bytes:
    """`link` of a mapping made by `to_mapping` (it holds no chain fields)."""
    record = hashlib.sha256(canonical_event(mapping)).digest()
    return hashlib.sha256(prev + record).digest()


_FLOATS = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)


def _holds_floats(descriptor: Descriptor | None) -> bool:
    return descriptor is not None and any(
        f.cpp_type in _FLOATS or _holds_floats(f.message_type) for f in descriptor.fields
    )


# The mapping names whose values may hold a float: float fields, and lists of records that hold one.
_FLOAT_FIELDS = tuple(
    m.name for m in model_fields()
    if m.field.cpp_type in _FLOATS or (m.kind == "messages" and _holds_floats(m.field.message_type))
)  # fmt: skip


def _orjson_agrees(value: dict[str, Any] | list[Any] | tuple[Any, ...]) -> bool:
    """False when a float that orjson writes differently from json is anywhere inside."""
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, float):
            if not math.isfinite(item) or "e" in repr(item):
                return False
        elif isinstance(item, dict | list | tuple) and not _orjson_agrees(item):
            return False
    return True


# -- the canonical bytes straight from the protobuf event (the sealer's path)
#
# Every key `to_mapping` writes for a field of the Event is the field's own name, or, for a message,
# starts with its name and a dot: the keys of one top-level field are a run of their own in sorted
# order, and the runs sort as those names do ("process." before "tags"). So the canonical bytes are
# the top-level fields' parts (their mapping's JSON without the braces) in that order, and the part
# of a message field depends on that message alone: events of one process, user or host repeat the
# same messages, so their parts are cached by the message's serialized bytes. Fields are read one by
# one (HasField, EventView's readers): upb's ListFields costs about a microsecond per field it lists.

_PART_CACHE = 2048  # parts per top-level message field; cleared when full (distinct files, ...)
_UNIQUE = "event.id"  # the message holding it never repeats: its part is not cached


class _Top:
    """How one top-level field of the Event becomes its part of the canonical bytes."""

    __slots__ = ("cache", "field", "floats", "message", "name", "names", "read", "timestamp")

    def __init__(self, field: FieldDescriptor) -> None:
        self.field = field
        self.name = ecs_name("", field)
        self.message = field.message_type is not None and not field.is_repeated and not is_timestamp(field)
        self.floats = field.cpp_type in _FLOATS or _holds_floats(field.message_type)
        inside = [m for m in model_fields() if m.name == self.name or m.name.startswith(self.name + ".")]
        # Read name by name unless it is or holds a timestamp (only to_mapping describes a bad one).
        timed = any(m.kind == "timestamp" for m in inside)
        self.names = None if timed else tuple(m.name for m in inside if m.kind != "message")
        self.read = message_reader(field.name) if self.message and not timed else None
        self.timestamp = is_timestamp(field) and not field.is_repeated
        unique = any(m.name == _UNIQUE for m in inside)
        self.cache: dict[bytes, bytes] | None = {} if self.message and not unique else None

    def part(self, event: Message, value: Message | None) -> bytes | None:
        """This field's part (b"" when it writes nothing); None when it holds what to_mapping
        describes under exfilguard.invalid (that key sorts among the others: the event's mapping
        is needed)."""
        if self.read is not None and value is not None:
            mapping = self.read(value)
        elif self.timestamp and value is not None:
            try:  # the ECS text is ASCII letters, digits and punctuation: nothing JSON escapes
                return f'"{self.name}":"{timestamp_to_iso(cast(Timestamp, value))}"'.encode()
            except TimestampError:
                return None
        elif self.names is not None:
            mapping = read_fields(event, self.names)
        else:
            mapping = field_mapping(self.field, value)
            if INVALID in mapping:
                return None
        if self.floats:
            return sorted_json(mapping)[1:-1]
        try:
            return orjson.dumps(mapping, option=_SORTED)[1:-1]
        except orjson.JSONEncodeError:  # beyond what orjson takes: the definition writes it
            return _ENCODE(mapping).encode()[1:-1]

    def cached_part(self, event: Message, value: Message, key: bytes) -> bytes | None:
        """`part`, kept in the cache under `key` (the message's serialized bytes)."""
        part = self.part(event, value)
        cache = self.cache
        if part is not None and cache is not None:
            if len(cache) >= _PART_CACHE:
                cache.clear()
            cache[key] = part
        return part


_MESSAGE, _READ = range(2)  # a message or timestamp (set when HasField says so), anything else
# (name, kind, cache, how) per top-level field, in the order their parts sort: a message's run by
# its name and a dot.
_PLAN = [
    (t.field.name, _MESSAGE if t.field.message_type and not t.field.is_repeated else _READ, t.cache, t)
    for t in sorted(
        (_Top(f) for f in cast(Descriptor, pb.Event.DESCRIPTOR).fields),
        key=lambda t: t.name + "." if t.message else t.name,
    )
]


def canonical_message(event: Message) -> bytes | None:
    """`canonical_event(to_mapping(event))` of an Event, found without building the mapping; None
    for an event `to_mapping` describes under exfilguard.invalid (the caller takes that path)."""
    parts = []
    has = event.HasField
    for name, kind, cache, top in _PLAN:
        if kind == _MESSAGE:
            if not has(name):
                continue
            value = getattr(event, name)
            if cache is not None:
                key = value.SerializeToString()
                part = cache.get(key) or top.cached_part(event, value, key)
            else:
                part = top.part(event, value)
        else:
            part = top.part(event, None)  # read as to_mapping has it: nothing when unset
        if part is None:
            return None
        if part:
            parts.append(part)
    return b"{" + b",".join(parts) + b"}"


def record_link(prev: bytes, canonical_bytes: bytes) -> bytes:
    """The chain value of an event given its canonical bytes and its predecessor's chain value."""
    return hashlib.sha256(prev + hashlib.sha256(canonical_bytes).digest()).digest()


def link(prev: bytes, mapping: dict[str, Any]) -> bytes:
    """The chain value of an event, given the chain value of its predecessor."""
    record = hashlib.sha256(canonical(mapping)).digest()
    return hashlib.sha256(prev + record).digest()
