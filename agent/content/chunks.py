"""Content-defined chunk fingerprints, and the compact table that maps them to tagged files.

A stream is cut with FastCDC (pyfastcdc, a compiled gear-hash chunker): cut points depend on
the bytes around them, not on offsets, so an insert near the start of a file shifts no later
chunk, and a truncated copy, an edited copy or one part of a `split` still holds most of the
source's chunks. Each chunk is named by a 40-bit BLAKE2b prefix.

`FeatureTable` maps such 40-bit keys to 24-bit file ids in one flat `array('Q')` (open
addressing, 8 bytes a slot): 2 GiB of tagged files (~200,000 chunks) take ~4 MiB, where a
dict of ints would take ~40 MiB.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterable

import pyfastcdc

# Chunk sizes (bytes): FastCDC's average is avg + min, so ~10 KiB; a file under MIN_CHUNK is
# one chunk. Index and written files must use the same parameters.
AVG_CHUNK = 8192
MIN_CHUNK = 2048
MAX_CHUNK = 32768
FLUSH = 256 * 1024  # cut what is buffered once this much has arrived

KEY_BITS = 40
ID_BITS = 24
MAX_ID = (1 << ID_BITS) - 1
_KEY_MASK = (1 << KEY_BITS) - 1
_ID_MASK = MAX_ID

ChunkSink = Callable[[int, int], None]  # (key, length)


def chunk_key(data: bytes | bytearray | memoryview) -> int:
    """The 40-bit name of a chunk (BLAKE2b prefix, never 0)."""
    return (int.from_bytes(hashlib.blake2b(data, digest_size=5).digest(), "little") & _KEY_MASK) or 1


def _uniform(data: memoryview) -> bool:
    """A chunk of one repeated byte (zero fill, padding) says nothing about where it came from."""
    first = data[:1].tobytes()
    edge = first * min(32, len(data))
    if data[:32].tobytes() != edge or data[-32:].tobytes() != edge:
        return False
    return data.tobytes().count(first) == len(data)


class ChunkStream:
    """Cuts bytes fed in pieces into the same chunks as the whole stream at once.

    FastCDC starts each chunk's search afresh at its first byte, so cutting a buffer and
    keeping back its last (possibly incomplete) chunk gives exactly the cuts of the whole.
    `sink(key, length)` is called for every chunk except uniform ones (zero fill).
    """

    __slots__ = ("_buf", "_cdc", "_sink", "bytes")

    def __init__(self, sink: ChunkSink) -> None:
        self._cdc = pyfastcdc.FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
        self._sink = sink
        self._buf = bytearray()
        self.bytes = 0  # fed so far

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the stream."""
        self._buf += data
        self.bytes += len(data)
        if len(self._buf) >= FLUSH:
            self._cut(final=False)

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet cut into chunks."""
        return len(self._buf)

    def finish(self) -> None:
        """The stream ended: cut what is left."""
        self._cut(final=True)

    def _cut(self, *, final: bool) -> None:
        if final and len(self._buf) <= MIN_CHUNK:  # FastCDC cuts nothing before MIN_CHUNK
            if self._buf and not _uniform(memoryview(self._buf)):  # a small file: one chunk
                self._sink(chunk_key(self._buf), len(self._buf))
            self._buf = bytearray()
            return
        view = memoryview(self._buf)
        try:
            chunks = list(self._cdc.cut_buf(view))
            keep = 0
            if not final and chunks:
                last = chunks.pop()
                keep = last.offset
            for chunk in chunks:
                piece = view[chunk.offset : chunk.offset + chunk.length]
                if not _uniform(piece):
                    self._sink(chunk_key(piece), chunk.length)
            rest = b"" if final else bytes(view[keep:])
        finally:
            view.release()
        self._buf = bytearray(rest)


def chunk_keys(pieces: Iterable[bytes]) -> list[tuple[int, int]]:
    """(key, length) of every chunk of the concatenated pieces (for tests and small inputs)."""
    out: list[tuple[int, int]] = []
    stream = ChunkStream(lambda key, length: out.append((key, length)))
    for piece in pieces:
        stream.update(piece)
    stream.finish()
    return out


class FeatureTable:
    """A multimap of 40-bit keys to 24-bit file ids in one array of 64-bit slots.

    Open addressing with linear probing, at most half full; a key held by several files has
    one slot per file. Ids of removed files are dropped from a lookup by the caller's `live`
    check and swept by `compact`, which also renumbers nothing: ids stay valid.
    """

    def __init__(self, capacity: int = 1 << 12) -> None:
        size = 1 << max(4, (capacity - 1).bit_length())
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1
        self.entries = 0

    def __len__(self) -> int:
        return self.entries

    @property
    def nbytes(self) -> int:
        """Memory held by the slots."""
        return len(self._slots) * 8

    def add(self, key: int, file_id: int) -> None:
        """Record that file `file_id` holds feature `key` (once per pair is enough)."""
        if (self.entries + 1) * 2 > len(self._slots):
            self._grow(len(self._slots) * 2)
        self._put((key & _KEY_MASK) << ID_BITS | file_id)

    def _put(self, entry: int) -> None:
        slots, mask = self._slots, self._mask
        at = _spread(entry >> ID_BITS) & mask
        while True:
            held = slots[at]
            if held == 0:
                slots[at] = entry
                self.entries += 1
                return
            if held == entry:
                return
            at = (at + 1) & mask

    def ids(self, key: int) -> list[int]:
        """File ids holding `key` (possibly of files since removed: check them)."""
        slots, mask = self._slots, self._mask
        key &= _KEY_MASK
        at = _spread(key) & mask
        found: list[int] = []
        while True:
            held = slots[at]
            if held == 0:
                return found
            if held >> ID_BITS == key:
                found.append(held & _ID_MASK)
            at = (at + 1) & mask

    def to_bytes(self) -> bytes:
        """The slots as bytes (this machine's byte order), to be saved."""
        return self._slots.tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> FeatureTable:
        """A table from `to_bytes()` (same byte order); ValueError if it cannot be one."""
        slots = len(blob) // 8
        if len(blob) % 8 or slots < 16 or slots & (slots - 1):
            raise ValueError(f"{len(blob)} bytes are not a table of a power-of-two count of slots")
        table = cls(16)
        table._slots = array("Q")
        table._slots.frombytes(blob)
        table._mask = slots - 1
        table.entries = slots - table._slots.count(0)
        if table.entries * 2 > slots:
            raise ValueError(f"{table.entries} entries in {slots} slots: more than half full")
        return table

    def compact(self, live: Callable[[int], bool]) -> int:
        """Drop every entry whose file id is no longer `live`; returns entries dropped."""
        before = self.entries
        kept = sum(1 for e in self._slots if e and live(e & _ID_MASK))
        size = 1 << max(4, (max(kept, 8) * 2 - 1).bit_length())
        self._rebuild(size, live)
        return before - self.entries

    def _grow(self, size: int) -> None:
        self._rebuild(size, None)

    def _rebuild(self, size: int, live: Callable[[int], bool] | None) -> None:
        # entry by entry from the old array: no list of millions of ints on the way (the
        # agent's peak memory is what counts)
        old = self._slots
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1
        self.entries = 0
        for entry in old:
            if entry and (live is None or live(entry & _ID_MASK)):
                self._put(entry)


def _spread(key: int) -> int:
    # Keys are hash bits already; fold the high bits in so that tables of any size use them.
    return key ^ (key >> 17)
