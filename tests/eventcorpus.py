"""A corpus of events that sets every field of the schema, in every shape a value can take.

Walks `pb.Event`'s descriptor (so fields added to the .proto later are covered) and fills a
random subset of fields with values chosen to break a careless encoder: unicode beyond the BMP,
control characters, quotes and backslashes, U+2028, empty strings, -0.0, tiny and huge floats,
integers at the edges of their types, empty and long repeated fields. Deterministic per seed.
"""

from __future__ import annotations

import random
import struct
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from protos import exfilguard_pb2 as pb

_TEXTS = (
    "",
    "a",
    "/srv/db/customers.csv",
    'quote " and backslash \\',
    "tab\tnewline\nreturn\r",
    "\x01\x1f\x7f control",
    "caf\u00e9 \u00fc\u00df",
    "\u2028\u2029 separators",
    "\U0001f600 emoji",
    "\u4e2d\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "</script>&<>",
    "x" * 300,
)
_FLOATS = (0.0, -0.0, 1.0, 0.5, 1e-7, 1e-5, 0.0001, 123456789.125, 1e15, 1e16, 1e17, 1.5e300,
           -2.5, 7.99, 0.1 + 0.2, 5e-324, 1.7976931348623157e308, 3.0e-310)
_INTS = {
    FieldDescriptor.CPPTYPE_INT32: (0, 1, -1, 2**31 - 1, -(2**31), 4242),
    FieldDescriptor.CPPTYPE_INT64: (0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, 1 << 20),
    FieldDescriptor.CPPTYPE_UINT32: (0, 1, 2**32 - 1, 1000),
    FieldDescriptor.CPPTYPE_UINT64: (0, 1, 2**64 - 1, 2**63, 2**53 + 1),
}


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return rng.randbytes(rng.randrange(0, 8))
        if rng.random() < 0.3:  # random code points (no surrogates: protobuf strings are UTF-8)
            return "".join(chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0xD800),
                                           rng.randrange(0xE000, 0x110000), rng.randrange(0, 0x20))))
                           for _ in range(rng.randrange(1, 12)))
        return rng.choice(_TEXTS)
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        value = rng.choice(_FLOATS) if rng.random() < 0.7 else rng.uniform(-1e6, 1e6)
        if kind == FieldDescriptor.CPPTYPE_FLOAT:  # what a float field can hold
            value = struct.unpack("f", struct.pack("f", max(-3e38, min(3e38, value))))[0]
        return value
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([v.number for v in field.enum_type.values])
    return rng.choice(_INTS[kind])


def _fill(message: Message, descriptor: Descriptor, rng: random.Random, depth: int) -> None:
    for field in descriptor.fields:
        if rng.random() < 0.35:
            continue
        sub = field.message_type
        if sub is not None and sub.full_name == "google.protobuf.Timestamp":
            getattr(message, field.name).FromMicroseconds(rng.randrange(0, 253402300799) * 1_000_000
                                                          + rng.randrange(1_000_000))
        elif sub is not None and field.is_repeated:
            for _ in range(rng.randrange(0, 3)):
                _fill(getattr(message, field.name).add(), sub, rng, depth + 1)
        elif sub is not None:
            if depth < 4:
                _fill(getattr(message, field.name), sub, rng, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(_scalar(field, rng) for _ in range(rng.randrange(0, 4)))
        else:
            setattr(message, field.name, _scalar(field, rng))


def corpus(count: int = 1500, seed: int = 13) -> list[pb.Event]:
    """`count` events, each with a random subset of every field set (some of them nearly empty)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        event = pb.Event()
        _fill(event, cast(Descriptor, pb.Event.DESCRIPTOR), rng, 0)
        out.append(event)
    return out
