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
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from protos.events import model_fields

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


def link(prev: bytes, mapping: dict[str, Any]) -> bytes:
    """The chain value of an event, given the chain value of its predecessor."""
    record = hashlib.sha256(canonical(mapping)).digest()
    return hashlib.sha256(prev + record).digest()
