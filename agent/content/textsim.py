"""Text similarity for exports: CSV, SQL dumps, source code, logs.

A text is reduced to features: each distinctive field of each line (split at `,` `;` tab
`|`, quotes and blanks stripped, lower-cased) and each whole line with its fields sorted.
A `sed` that rewrites one column leaves the other fields; a column reorder leaves every
field and every sorted line. Features are hashed to 64 bits.

A tagged file keeps a *sample* of its features: those whose hash is 0 modulo a rate (1/8 at
first, halved until at most `SAMPLE_MAX` remain), so the sample is content-defined and the
same feature is sampled in every file. A written text's features that pass the finest rate
are looked up; the share of a source's sample found in it is its score (containment).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator

SAMPLE_MAX = 32         # features kept per tagged text file (10,000 texts: ~2.5 MiB of table)
BASE_RATE_BITS = 3      # the sample keeps hashes with this many low zero bits at first
MIN_SAMPLE = 8          # a source with fewer sampled features is too small to judge by text
MAX_LINE = 64 * 1024    # longer lines are cut (a minified blob, not an export)
_SPLIT = re.compile(rb"[,;\t|]")
_STRIP = b" \t\r\"'`"
_NOT_CONTROL = bytes(b for b in range(256) if not (b < 9 or 13 < b < 32))


def looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes are text: no NUL, and at most 2% control bytes."""
    if not head or b"\x00" in head:
        return False
    control = len(head[:8192].translate(None, _NOT_CONTROL))  # in C: every written file asks
    return control * 50 <= min(len(head), 8192)


def too_few_features(text: bytes) -> bool:
    """Whether a whole text has too few lines and fields to ever give `MIN_SAMPLE` features
    (each line gives at most one per field and one for itself): not worth featurizing."""
    fields = text.count(b",") + text.count(b";") + text.count(b"\t") + text.count(b"|")
    return fields + 2 * (text.count(b"\n") + 1) < MIN_SAMPLE


def _distinctive(field: bytes) -> bool:
    # "1", "yes", "2024" appear in any table: they would tie unrelated files together.
    return len(field) >= 4 and not (field.isdigit() and len(field) < 6)


def line_features(line: bytes) -> Iterator[int]:
    """The hashed features of one line of text."""
    line = line[:MAX_LINE].strip().lower()
    if not line:
        return
    fields = [f.strip(_STRIP) for f in _SPLIT.split(line)]
    for field in fields:
        if _distinctive(field):
            yield _key(b"f\x00" + field)
    if len(line) >= 8:
        yield _key(b"l\x00" + b"\x00".join(sorted(fields)))


def _key(feature: bytes) -> int:
    # A keyed hash of our own, not hash(): Python seeds that per process, so which features a
    # tagged text keeps in its sample (and so whether an export is recognised) changed from
    # one agent start to the next.
    return int.from_bytes(hashlib.blake2b(feature, digest_size=8).digest(), "little")


class TextFeatures:
    """Splits a text fed in pieces into lines and hands each line's features to `sink`."""

    __slots__ = ("_partial", "_sink", "bytes")

    def __init__(self, sink: Callable[[int], None]) -> None:
        self._sink = sink
        self._partial = b""
        self.bytes = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes."""
        self.bytes += len(data)
        lines = (self._partial + bytes(data)).split(b"\n")
        self._partial = lines.pop()[:MAX_LINE]
        sink = self._sink
        for line in lines:
            for feature in line_features(line):
                sink(feature)

    def finish(self) -> None:
        """The text ended (a last line without a newline counts)."""
        for feature in line_features(self._partial):
            self._sink(feature)
        self._partial = b""


class TextSample:
    """The content-defined sample of one text's features (at most SAMPLE_MAX, distinct)."""

    __slots__ = ("bits", "keys")

    def __init__(self) -> None:
        self.bits = BASE_RATE_BITS
        self.keys: set[int] = set()

    def add(self, feature: int) -> None:
        """Offer one feature; kept when it passes the current rate."""
        if feature & ((1 << self.bits) - 1):
            return
        self.keys.add(feature)
        while len(self.keys) > SAMPLE_MAX:
            self.bits += 1
            mask = (1 << self.bits) - 1
            self.keys = {k for k in self.keys if not k & mask}


def sampled(feature: int) -> bool:
    """Whether a written text's feature can be in any source's sample (the finest rate)."""
    return not feature & ((1 << BASE_RATE_BITS) - 1)
