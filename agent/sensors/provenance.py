"""Provenance: where a written file's data came from, by exact hash or by lineage, and how sure.

Content evidence (`exact` here; `member`, `chunks`, `text` from agent/content) is the
strongest; `sampled` is the content test of a file too large to hash whole (equal size and
equal start, middle and end blocks). Without it, lineage: `lineage-bytes` when the writing
pipeline read tagged data while the file was being written (from shortly before its birth time
until it was closed) and wrote no more than it read (plus room for archive headers; 4.5 times
it for a text: an encoding or an export) and no less than 1/200 of it; `lineage-process` when
the writer or its pipeline merely read tagged files at some point: a guess, with a low
confidence. A derived file (written from tagged data outside the tagged trees) keeps its
provenance in the fingerprint index; a copy of it inherits it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from agent.sensors.lineage import Flow, SourceRead
from protos import exfilguard_pb2 as pb
from protos.events import fs_text

EXACT = "exact"
SAMPLED = "sampled"
MEMBER = "member"
CHUNKS = "chunks"
TEXT = "text"
LINEAGE_BYTES = "lineage-bytes"
LINEAGE_PROCESS = "lineage-process"
CONTENT = (EXACT, SAMPLED, MEMBER, CHUNKS, TEXT)
LINEAGE = (LINEAGE_BYTES, LINEAGE_PROCESS)

CONFIDENCE = {EXACT: 1.0, SAMPLED: 0.9, LINEAGE_BYTES: 0.8, LINEAGE_PROCESS: 0.2}
# Reads this long before a file was created still count as flowing into it: the processes of a
# shell pipeline start together, and `tar` may open its first file before the shell opened `> x`.
SLACK_SECONDS = 2.0
# What a pipeline writes may exceed what it read by this (tar headers and block padding).
OVERHEAD_BYTES = 64 << 10
OVERHEAD_RATIO = 1.1
# A text written from what was read may be larger than it: an encoding (base64 1.35x, a hex
# dump up to 4.25x) or an export (a database dumped as SQL statements ~2x, rows as JSON).
TEXT_RATIO = 4.5
# Nor be smaller than this share of it: even text compresses less than 200:1; a lock file or a
# log line written while reading a database is not that database.
MAX_RATIO = 200
MAX_SOURCES = 256  # sources kept per provenance (the count of all is kept too)
CHAIN_SECONDS = 2.0  # a writer's next output born this soon after its last one continues it


@dataclass(frozen=True, slots=True)
class Provenance:
    """Evidence that a written file holds tagged data: how, how sure, from which sources."""

    identified_by: str
    confidence: float
    sources: tuple[SourceRead, ...]  # the largest first, at most MAX_SOURCES
    files: int                       # tagged files behind it (all of them, not only those kept)
    bytes_read: int = 0
    bytes_written: int = 0
    share: float = 0.0

    @property
    def tags(self) -> list[str]:
        """Every tag of every source."""
        return list(dict.fromkeys(t for s in self.sources for t in s.tags))

    @property
    def evidence(self) -> bool:
        """Content or byte-correlated lineage (what a high or critical alert needs)."""
        return self.identified_by != LINEAGE_PROCESS

    @property
    def source(self) -> str:
        """The single best source: the largest file (never a directory)."""
        return self.sources[0].path if self.sources else ""


def exact(path: str, tags: tuple[str, ...], size: int) -> Provenance:
    """The written file equals this tagged file."""
    return Provenance(EXACT, CONFIDENCE[EXACT], (SourceRead(path, tags, size, time.time()),), 1,
                          share=1.0)


def sampled(path: str, tags: tuple[str, ...], size: int) -> Provenance:
    """The written file has this tagged file's size and sampled hash (too large to hash whole)."""
    return Provenance(SAMPLED, CONFIDENCE[SAMPLED], (SourceRead(path, tags, size, time.time()),), 1,
                      share=1.0)


def by_lineage(flow: Flow, written: int, created: float | None, *, text: bool = False) -> Provenance | None:
    """Provenance of a file of `written` bytes (`text`: it is text), born at `created` (wall
    clock; None: unknown), from the tagged data that reached its writers. None when none did."""
    if not flow.sources or written <= 0:
        return None  # an empty file holds no data (its writer may fill it and close it again)
    moment = (created if created is not None else time.time() - 5 * SLACK_SECONDS) - SLACK_SECONDS
    during = flow.since(moment)
    read = sum(s.bytes for s in during)
    ratio = TEXT_RATIO if text else OVERHEAD_RATIO
    if during and written * MAX_RATIO >= read and written <= read * ratio + OVERHEAD_BYTES:
        return _made(LINEAGE_BYTES, during, read, written)
    return _made(LINEAGE_PROCESS, flow.sources, sum(s.bytes for s in flow.sources), written)


class Volumes:
    """The outputs a writer closes one after the other (`7z a -v100m`: each volume is born as
    the last is closed, and the later volumes' bytes were read long before they were born): a
    file born within CHAIN_SECONDS of the close of the same process's previous output with byte
    evidence is judged from the reads since the first of them was born. Thread-safe, bounded."""

    def __init__(self, limit: int = 1024) -> None:
        self._lock = threading.Lock()
        self._last: OrderedDict[int, tuple[float, float]] = OrderedDict()  # pid -> (first born, last closed)
        self._limit = limit

    def start(self, pid: int, born: float | None) -> float | None:
        """When the run of outputs a file born at `born` continues was born (`born` itself
        when it continues none)."""
        if born is None:
            return None
        with self._lock:
            last = self._last.get(pid)
        if last is not None and last[0] <= born <= last[1] + CHAIN_SECONDS:
            return last[0]
        return born

    def closed(self, pid: int, born: float | None, found: Provenance | None) -> None:
        """A file born at `born` was closed, identified as `found`: only byte evidence
        starts or continues a run."""
        with self._lock:
            if born is None or found is None or found.identified_by != LINEAGE_BYTES:
                self._last.pop(pid, None)
                return
            last = self._last.get(pid)
            first = last[0] if last is not None and last[0] <= born <= last[1] + CHAIN_SECONDS else born
            self._last.pop(pid, None)
            self._last[pid] = (first, time.time())
            while len(self._last) > self._limit:
                self._last.popitem(last=False)


def only_guessed(found: Provenance) -> Provenance:
    """Byte evidence overruled by content: what the file holds was read and none of it is
    tagged (an archive of untagged photos, written just after a tagged read): a guess."""
    return dataclasses.replace(found, identified_by=LINEAGE_PROCESS, confidence=CONFIDENCE[LINEAGE_PROCESS])


def _made(how: str, sources: tuple[SourceRead, ...], read: int, written: int) -> Provenance:
    largest = tuple(sorted(sources, key=lambda s: -s.bytes)[:MAX_SOURCES])
    confidence = CONFIDENCE[how]
    if how == LINEAGE_BYTES and not all(s.evidence for s in largest):
        confidence = CONFIDENCE[LINEAGE_PROCESS]
    return Provenance(how, confidence, largest, len(sources), bytes_read=read, bytes_written=written)


def describe(copy: pb.Copy, ident: Provenance) -> None:
    """Fill the copy fields of an event from a provenance."""
    copy.identified_by = ident.identified_by
    copy.confidence = round(ident.confidence, 3)
    if ident.share:
        copy.share = round(ident.share, 4)
    copy.sources.extend(fs_text(s.path) for s in ident.sources)
    if ident.bytes_read:
        copy.bytes_read = ident.bytes_read
    if ident.bytes_written:
        copy.bytes_written = ident.bytes_written
    copy.files_read = max(copy.files_read, ident.files)


# ------------------------------------------------------------------ birth time

_AT_EMPTY_PATH = 0x1000
_STATX_BTIME = 0x800
_BTIME_OFFSET = 80  # struct statx: stx_btime after the 64-byte head and stx_atime
_libc: ctypes.CDLL | None = None


def created_at(fd: int) -> float | None:
    """Birth time (wall clock) of an open file from statx; None where the file system or
    the kernel does not record one."""
    global _libc  # noqa: PLW0603 - one binding for the process, made on first use
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(256)
    if _libc.statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buf) != 0:
        return None
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & _STATX_BTIME:
        return None
    seconds = int.from_bytes(buf.raw[_BTIME_OFFSET : _BTIME_OFFSET + 8], "little", signed=True)
    nanos = int.from_bytes(buf.raw[_BTIME_OFFSET + 8 : _BTIME_OFFSET + 12], "little")
    return seconds + nanos / 1e9
