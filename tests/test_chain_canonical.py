"""The chain's canonical JSON is built by orjson only where that gives the definition's very bytes."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

from collector.evidence import formats
from collector.store.rows import stored_canonical
from protos import chain, events
from protos import exfilguard_pb2 as pb
from tests.eventcorpus import corpus

# The definition (docs/evidence.md): sorted keys, no spaces, UTF-8, not ASCII-escaped.
DEFINITION = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def test_every_event_of_the_corpus_gets_the_bytes_of_the_definition() -> None:
    fast = direct = from_bytes = 0
    for event in corpus(2000, seed=29):
        mapping = events.to_mapping(event)
        expected = DEFINITION(mapping).encode()
        assert chain.canonical(mapping) == expected
        assert chain.canonical_event(mapping) == expected  # the sealer's and the export's path
        assert chain.canonical_text(mapping) == DEFINITION(mapping)
        # The sealer's path, straight from the protobuf (None: only for what to_mapping calls invalid).
        from_message = chain.canonical_message(event)
        assert from_message == expected or (from_message is None and events.INVALID in mapping)
        direct += from_message is not None
        assert chain.canonical_message(event) == from_message  # again, its messages' parts now cached
        # The sealer's path from the stored bytes: the same, or None (the caller then parses the Event).
        stored = chain.canonical_stored(event.SerializeToString())
        assert stored == from_message or (from_message is None and stored is None)
        from_bytes += stored is not None
        # An export's JSON Lines record (key order kept) is json's text too.
        line = {**mapping, formats.PREV: "00" * 32, formats.HASH: "ab" * 32, formats.PREVIOUS_SEQUENCE: 7}
        assert formats.jsonl_line(line) == LINE(line).encode()
        fast += chain._orjson_agrees(mapping) and chain.event_floats_agree(mapping)
    assert fast > 1000  # most of them on the fast path: the test compares orjson, not json with itself
    assert direct > 1000
    assert from_bytes == direct


def test_floats_of_every_magnitude_and_odd_values_match_or_fall_back() -> None:
    rng = random.Random(3)
    values: list[Any] = [struct.unpack("d", rng.randbytes(8))[0] for _ in range(3000)]
    values += [rng.uniform(-1, 1) * 10 ** rng.randint(-12, 22) for _ in range(3000)]
    values += [1e16, 1e-5, -0.0, 0.0, math.inf, -math.inf, math.nan, 5e-324, 2**64, -(2**63) - 1,
               "\ud800 lone surrogate", True, None, [1.5, {"b": 1e-7, "a": 0.25}], (1, 2.5)]
    for value in values:
        mapping = {"z": value, "a": [value], "m": {"k": value}}
        try:
            expected = DEFINITION(mapping).encode()
        except UnicodeEncodeError:
            continue  # not UTF-8 encodable either way (protobuf strings never hold one)
        assert chain.canonical(mapping) == expected, repr(value)


def test_chain_fields_are_left_out_and_the_link_is_unchanged() -> None:
    mapping = {"event.id": "e", "exfilguard.chain.hash": "ab", "exfilguard.chain.prev": "cd", "n": 1.0}
    assert chain.canonical(mapping) == b'{"event.id":"e","n":1.0}'
    import hashlib

    record = hashlib.sha256(b'{"event.id":"e","n":1.0}').digest()
    assert chain.link(chain.GENESIS, mapping) == hashlib.sha256(chain.GENESIS + record).digest()


def test_stored_bytes_that_protobuf_would_not_write_take_the_events_way() -> None:
    # A message field sent twice is merged by protobuf; read as bytes, the second would replace
    # the first: the bytes' length tells, and the Event's way gives the merged event's bytes.
    event = next(e for e in corpus(50, seed=5) if e.process.pid and e.process.name != "second")
    data = event.SerializeToString()
    twice = data + pb.Event(process=pb.Process(name="second")).SerializeToString()
    merged = pb.Event.FromString(twice)
    assert merged.process.name == "second" and merged.process.pid == event.process.pid
    assert chain.canonical_stored(twice) is None
    assert stored_canonical("store", "a", 1, twice) == chain.canonical_message(merged)
    # A length written in more bytes than it needs: the same event, not the same bytes.
    info = event.event.SerializeToString()
    padded = b"\x12" + bytes([len(info) | 0x80, 0]) + info + pb.Event(user=event.user).SerializeToString()
    assert chain.canonical_stored(padded) is None
    assert stored_canonical("store", "a", 1, padded) == chain.canonical_message(pb.Event.FromString(padded))
    # A message's bytes that do not parse, and bytes that are no Event at all.
    assert chain.canonical_stored(b"\x3a\x02\xff\xff") is None
    assert chain.canonical_stored(b"\xff") is None
    # Unknown fields (a newer agent's) are left out both ways; an empty message set has no part.
    newer = data + b"\xa2\x06\x03abc"
    assert chain.canonical_stored(newer) == chain.canonical_message(event)
    bare = pb.Event(event=pb.EventInfo(id="e", action="file.read", sequence=1)).SerializeToString()
    assert chain.canonical_stored(bare + b"\x2a\x00") == chain.canonical_message(pb.Event.FromString(bare))
    epoch = bare + b"\x0a\x00"  # a Timestamp set to nothing: 1970-01-01T00:00:00.000000Z
    assert chain.canonical_stored(epoch) == chain.canonical_message(pb.Event.FromString(epoch))
