"""Byte entropy of written data: near 8 bits a byte is compressed or encrypted output.

An opaque file (an `openssl enc` of a tar, a format nothing here can open) cannot be matched
by content; its entropy, with the bytes of tagged data its writer's pipeline read, is what
lineage reports instead.
"""

from __future__ import annotations

import math
import os
from collections import Counter

SAMPLE_BYTES = 64 * 1024  # per place sampled (start, middle, end)


def byte_entropy(data: bytes | bytearray | memoryview) -> float:
    """Shannon entropy of the bytes, in bits per byte (0..8), rounded to 3 places."""
    total = len(data)
    if total == 0:
        return 0.0
    counts = Counter(bytes(data))
    bits = -sum(n / total * math.log2(n / total) for n in counts.values())
    return round(max(0.0, bits), 3)


def sample_entropy(fd: int, size: int) -> float:
    """Entropy of up to three 64 KiB samples of an open file (start, middle, end)."""
    if size <= 3 * SAMPLE_BYTES:
        return byte_entropy(os.pread(fd, size, 0))
    parts = [os.pread(fd, SAMPLE_BYTES, offset)
             for offset in (0, size // 2 - SAMPLE_BYTES // 2, size - SAMPLE_BYTES)]
    return byte_entropy(b"".join(parts))
