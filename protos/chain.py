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
from collections.abc import Callable
from typing import Any, cast

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from protos import exfilguard_pb2 as pb
from protos.events import (
    TimestampError,
    ecs_name,
    is_timestamp,
    mapping_lines,
    model_fields,
    timestamp_to_iso,
    to_mapping,
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
# same messages, so their parts are cached by the message's serialized bytes.
#
# Reading a field through upb costs ~70 ns, and calling a reader per field (EventView's closures)
# as much again; upb's ListFields about a microsecond per field it lists. So the reading is written
# out once, from the descriptors, as straight-line Python (the model's fields in .proto order, each
# read as EventView's reader of that field reads it: tests/test_events.py holds those to
# to_mapping) and compiled at import: one function per top-level field, one for the event.

_PART_CACHE = 2048  # parts per top-level field; cleared when full (distinct files, ...)
_UNIQUE = "event.id"  # the message holding it never repeats: its part is not cached


def _dump_part(mapping: dict[str, Any]) -> bytes:
    """A part of a mapping that holds no float: orjson, or the definition beyond what orjson takes."""
    try:
        return orjson.dumps(mapping, option=_SORTED)[1:-1]
    except orjson.JSONEncodeError:
        return _ENCODE(mapping).encode()[1:-1]


def _dump_float_part(mapping: dict[str, Any]) -> bytes:
    return sorted_json(mapping)[1:-1]


def _cached_part(name: str, key: str, argument: str, indent: str) -> list[str]:
    """Lines that append the part of top-level field `name`, looked up in its cache by `key` (on a
    miss, `part_NAME(argument)`)."""
    cache = f"cache_{name}"
    return [
        f"{indent}k = {key}",
        f"{indent}p = {cache}.get(k)",
        f"{indent}if p is None:",
        f"{indent} p = part_{name}({argument})",
        f"{indent} if len({cache}) >= {_PART_CACHE}: {cache}.clear()",
        f"{indent} {cache}[k] = p",
        f"{indent}if p: parts.append(p)",
    ]


# -- the same bytes straight from a stored event's bytes (the sealer's path)
#
# Parsed as the Event it is, each of its messages is built by upb and then serialized again for
# its cache key: 7.7 of the sealer's 10 us an event. Parsed as `EventParts` (the Event with
# each message field read as bytes, made from its descriptor), the event's messages are keys as
# they are, and only a part not cached (the event's own `event` message, a new file) and the
# timestamp are parsed, with their own message types: ~3 us. Both parsings agree field by field
# (the same numbers and wire types; unknown fields are unknown to both) except where a message
# field occurs twice, which protobuf merges and a bytes field replaces: such an event, and one
# encoded other than as protobuf writes it, re-encodes to another length (ByteSize), and takes
# the Event's way.


def _parts_class() -> Callable[[bytes], Message] | None:
    """The parser of EventParts; None when the Event has a field kind the parts cannot hold."""
    proto = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="exfilguard/chain_parts.proto", package="exfilguard.chain")
    file.syntax = "proto3"
    message = file.message_type.add(name="EventParts")
    for field in cast(Descriptor, pb.Event.DESCRIPTOR).fields:
        out = message.field.add(name=field.name, number=field.number, json_name=field.json_name)
        if field.message_type is not None and not field.is_repeated:
            out.type, out.label = proto.TYPE_BYTES, proto.LABEL_OPTIONAL
            out.proto3_optional, out.oneof_index = True, len(message.oneof_decl)  # presence, as a message has
            message.oneof_decl.add(name=f"_{field.name}")
        elif field.message_type is None and field.enum_type is None:
            out.type = cast(descriptor_pb2.FieldDescriptorProto.Type.ValueType, field.type)
            out.label = proto.LABEL_REPEATED if field.is_repeated else proto.LABEL_OPTIONAL
        else:
            return None
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName(f"{file.package}.{message.name}")
    parts: type[Message] = message_factory.GetMessageClass(descriptor)
    return parts.FromString


def _compile_canonical() -> tuple[Callable[[Message], bytes | None], Callable[[bytes], bytes | None]]:
    """The functions behind `canonical_message` and `canonical_stored`, written out from the Event's
    descriptor (one part function and one cache per top-level field, shared by both)."""
    parser = _parts_class()
    scope: dict[str, Any] = {
        "_iso": timestamp_to_iso, "_to_mapping": to_mapping, "_copysign": math.copysign,
        "_TimestampError": TimestampError, "_dump": _dump_part, "_dump_floats": _dump_float_part,
        "_DecodeError": DecodeError, "_Parts": parser,
    }  # fmt: skip
    fields = cast(Descriptor, pb.Event.DESCRIPTOR).fields
    single = {f.name for f in fields if f.message_type and not f.is_repeated and not is_timestamp(f)}
    body = ["def canonical_message(e):", " parts = []", " try:"]
    stored = ["def canonical_stored(data):", " try:", "  e = _Parts(data)", " except _DecodeError:",
              "  return None", " if e.ByteSize() != len(data):", "  return None", " parts = []", " try:"]
    for field in sorted(fields, key=lambda f: ecs_name("", f) + ("." if f.name in single else "")):
        name = ecs_name("", field)
        if field.message_type is not None and not field.is_repeated:
            scope[f"parse_{field.name}"] = message_factory.GetMessageClass(field.message_type).FromString
        if is_timestamp(field) and not field.is_repeated:
            # the ECS text is ASCII letters, digits and punctuation: nothing JSON escapes
            head = repr(f'"{name}":"'.encode())
            tail = repr(b'"')
            for lines, value in ((body, f"e.{field.name}"), (stored, f"parse_{field.name}(e.{field.name})")):
                lines.append(f"  if e.HasField({field.name!r}):")
                lines.append(f"   parts.append({head} + _iso({value}).encode() + {tail})")
            continue
        part = [f"def part_{field.name}({'m0' if field.name in single else 'e'}):", " d = {}"]
        if field.name in single:
            mapping_lines(cast(Descriptor, field.message_type).fields, "m0", name + ".", 1, part)
        else:  # tags: read as a message's fields are
            mapping_lines((field,), "e", "", 1, part)
        floats = field.cpp_type in _FLOATS or _holds_floats(field.message_type)
        part.append(f" return {'_dump_floats' if floats else '_dump'}(d)")
        exec("\n".join(part), scope)  # noqa: S102 (source written above from the descriptors)
        unique = any(m.name == _UNIQUE for m in model_fields() if m.name.startswith(name + "."))
        # tags: cached by their values (not floats: 0.0 and -0.0 are one key but two texts)
        if field.name not in single and field.message_type is None and field.cpp_type not in _FLOATS:
            scope[f"cache_{field.name}"] = {}
            for lines in (body, stored):  # a list made in upb's C, then a tuple: 2/3 of tuple() of the field
                lines.extend(_cached_part(field.name, f"tuple(e.{field.name}[:])", "e", "  "))
        elif field.name not in single:
            for lines in (body, stored):
                lines.extend([f"  p = part_{field.name}(e)", "  if p: parts.append(p)"])
        elif unique:
            body += [f"  if e.HasField({field.name!r}):", f"   p = part_{field.name}(e.{field.name})"]
            body += ["   if p: parts.append(p)"]
            # No HasField: an empty message (set or not) has an empty part, which is left out anyway.
            stored += [f"  k = e.{field.name}", "  if k:", f"   p = part_{field.name}(parse_{field.name}(k))"]
            stored += ["   if p: parts.append(p)"]
        else:  # one cache for both: a message's part is that of the bytes it parses from, however made
            scope[f"cache_{field.name}"] = {}
            body.append(f"  if e.HasField({field.name!r}):")
            body += _cached_part(field.name, f"e.{field.name}.SerializeToString()", f"e.{field.name}", "   ")
            stored += [f"  k = e.{field.name}", "  if k:"]
            stored += _cached_part(field.name, "k", f"parse_{field.name}(k)", "   ")[1:]
    end = ["  return None", ' return b"{" + b",".join(parts) + b"}"']
    body += [" except _TimestampError:", *end]
    stored += [" except (_TimestampError, _DecodeError):", *end]
    if parser is None:
        stored = ["def canonical_stored(data):", " return None"]
    exec("\n".join(body), scope)  # noqa: S102 (source written above from the descriptors)
    exec("\n".join(stored), scope)  # noqa: S102 (source written above from the descriptors)
    return scope["canonical_message"], scope["canonical_stored"]


canonical_message, canonical_stored = _compile_canonical()
"""`canonical_message`: `canonical_event(to_mapping(event))` of an Event, found without building the
mapping; None for an event `to_mapping` describes under exfilguard.invalid (the caller takes that
path). `canonical_stored`: the same of an Event's serialized bytes, or None where it cannot be sure
(an event encoded other than as protobuf writes it, or that does not parse: the caller parses the
Event and takes `canonical_message`'s way)."""


def record_link(prev: bytes, canonical_bytes: bytes) -> bytes:
    """The chain value of an event given its canonical bytes and its predecessor's chain value."""
    return hashlib.sha256(prev + hashlib.sha256(canonical_bytes).digest()).digest()


def link(prev: bytes, mapping: dict[str, Any]) -> bytes:
    """The chain value of an event, given the chain value of its predecessor."""
    record = hashlib.sha256(canonical(mapping)).digest()
    return hashlib.sha256(prev + record).digest()
