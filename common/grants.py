"""The signed form of a prevention exception an officer grants (`exfilguard exception grant`).

The collector signs each grant with its Ed25519 evidence key; the agent honours an entry of
`prevent.exceptions` only when that signature verifies against the key it pinned from the
collector (docs/prevention.md, trust model). The signed bytes are canonical JSON (sorted keys,
no spaces, UTF-8) of the fields below under a `purpose` that no export manifest carries, so a
signature made for one can never pass for the other. `until` is signed as its ECS time string.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

PURPOSE = "exfilguard prevention exception"
SIGNED_FIELDS = ("id", "host", "user", "device", "until", "note", "granted_by")
MAX_KEY_CHARS = 64  # base64 of 32 raw bytes is 44


def signed_bytes(grant: Mapping[str, str]) -> bytes:
    """What is signed: the grant's SIGNED_FIELDS (host lower case), canonical JSON."""
    body = {name: str(grant.get(name, "")) for name in SIGNED_FIELDS}
    body["host"] = body["host"].lower()
    body["purpose"] = PURPOSE
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verifies(public_key_b64: str, signature_b64: str, grant: Mapping[str, str]) -> bool:
    """True when `signature_b64` is the signature of the key `public_key_b64` (raw, base64) over `grant`."""
    # imported when a grant is checked: an agent with no exceptions (most) does not carry
    # the library's ~7 MiB in its sensors
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), signed_bytes(grant))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
