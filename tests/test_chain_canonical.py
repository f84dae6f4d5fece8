"""The chain's canonical JSON is built by orjson only where that gives the definition's very bytes."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

from collector.evidence import formats
from protos import chain, events
from tests.eventcorpus import corpus

# The definition (docs/evidence.md): sorted keys, no spaces, UTF-8, not ASCII-escaped.
DEFINITION = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def test_every_event_of_the_corpus_gets_the_bytes_of_the_definition() -> None:
    fast = direct = 0
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
        # An export's JSON Lines record (key order kept) is json's text too.
        line = {**mapping, formats.PREV: "00" * 32, formats.HASH: "ab" * 32, formats.PREVIOUS_SEQUENCE: 7}
        assert formats.jsonl_line(line) == LINE(line).encode()
        fast += chain._orjson_agrees(mapping) and chain.event_floats_agree(mapping)
    assert fast > 1000  # most of them on the fast path: the test compares orjson, not json with itself
    assert direct > 1000


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
