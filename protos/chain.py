"""The per-agent hash chain over events in sequence order.

    record = SHA-256(canonical(event mapping))
    link_n = SHA-256(link_{n-1} || record_n),  link_0 = 32 zero bytes

The chain is over the dotted ECS mapping (what exports contain), not protobuf bytes,
so `verify` can recompute it offline from an export alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = bytes(32)

# Chain columns travel with exported records but are not part of what is hashed.
CHAIN_FIELDS = ("exfilguard.chain.hash", "exfilguard.chain.prev")


# Built once: json.dumps with non-default options builds a new encoder on every call.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_text(mapping: dict[str, Any]) -> str:
    """`canonical` before UTF-8 encoding (exports write it as text)."""
    return _ENCODE({k: v for k, v in mapping.items() if k not in CHAIN_FIELDS})


def canonical_body_text(body: dict[str, Any]) -> str:
    """`canonical_text` of a mapping already without chain fields (saves a copy per event)."""
    return _ENCODE(body)


def canonical(mapping: dict[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8, chain fields left out."""
    return canonical_text(mapping).encode()


def link(prev: bytes, mapping: dict[str, Any]) -> bytes:
    """The chain value of an event, given the chain value of its predecessor."""
    record = hashlib.sha256(canonical(mapping)).digest()
    return hashlib.sha256(prev + record).digest()
