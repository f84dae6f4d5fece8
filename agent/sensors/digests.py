"""The two hashes a tagged file is known by: a sampled one (size and three blocks) and SHA-256."""

from __future__ import annotations

import hashlib
import os

_BLOCK = 4096
_CHUNK = 1 << 20


def sample_digest(fd: int, size: int, head: bytes = b"") -> bytes:
    """Hash of the size and three blocks (start, middle, end): a cheap first test. `head`,
    the file's first bytes when the caller has read them, spares a small file a second read."""
    h = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= 3 * _BLOCK:
        h.update(head[:size] if len(head) >= size else os.pread(fd, size, 0))
    else:
        for offset in (0, (size // 2) - (_BLOCK // 2), size - _BLOCK):
            h.update(os.pread(fd, _BLOCK, offset))
    return h.digest()


def full_digest(fd: int, limit: int) -> str | None:
    """SHA-256 of a whole file (from offset 0); None if it is larger than `limit` bytes."""
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return h.hexdigest()
        offset += len(chunk)
        if offset > limit:
            return None
        h.update(chunk)
