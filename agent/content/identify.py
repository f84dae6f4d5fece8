"""ContentIdentifier: which tagged files a written file (or a raw device's bytes) holds, and how sure.

The one call the copy detector (and the raw-write check, and lineage) makes:

    found = identifier.identify_fd(fd, size, label=path)      # a written file
    found = identifier.identify_stream(device, label=node, limit=n, seekable=False)

An archive is opened as a stream (archive.py) and each member probed; anything else is
probed whole. A probe feeds the bytes to the chunker (chunks.py), to the text features
(textsim.py) when the data is text and tagged texts exist, and to SHA-256 when a tagged file
of the member's exact size exists. The result names the sources found, the method
(`exact`, `member`, `chunks`, `text`), a confidence and the share of the sources found.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import IO, Any

from agent.content import encodings
from agent.content.archive import (
    DEVICE_ERRNOS,
    ArchiveLimits,
    Readable,
    device_failure,
    inspect_archive,
    sniff,
)
from agent.content.catalog import TEXT_BYTES, ContentCatalog
from agent.content.chunks import FLUSH, ChunkStream
from agent.content.commonplace import commonplace_source, too_small
from agent.content.entropy import SAMPLE_BYTES, byte_entropy, sample_entropy
from agent.content.textsim import MIN_SAMPLE, TextFeatures, looks_like_text, sampled
from agent.sensors.fingerprints import FingerprintIndex
from protos import exfilguard_pb2 as pb
from protos.events import fs_texts

MAX_LISTED = 1000             # sources and members named in one event
MIN_CHUNK_BYTES = 16 * 1024   # chunk evidence below this (and below 90% of a small source) is noise
MIN_TEXT_SCORE = 0.3          # share of a source's text sample that must be found
TEXT_DECIDE = 2 * FLUSH       # bytes of a text held back until its chunks have spoken
STRENGTH = {"exact": 4, "member": 3, "chunks": 2, "text": 1, "": 0}
SNIFF_BYTES = 8192            # of a text, read to tell whether it encodes binary data
MAX_ENCODED = 64 << 20        # of an encoded text, read to decode (base64 48 MiB, a hex dump 13 MiB)


@dataclass(slots=True)
class MemberFound:
    """One archive member (or the whole file) identified as a tagged file."""

    name: str
    source: str
    identified_by: str    # exact, chunks or text
    share: float          # of the source found in it
    size: int
    confidence: float
    matched: int          # bytes of the source found (estimated for text)
    source_size: int
    tags: tuple[str, ...] = ()


@dataclass
class Identification:
    """What a written file holds of tagged data; empty `identified_by` when nothing was found."""

    identified_by: str = ""
    confidence: float = 0.0
    share: float = 0.0
    sources: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    members: list[MemberFound] = field(default_factory=list)
    members_total: int = 0
    format: str = ""
    entropy: float = 0.0
    refused: str = ""
    bytes_read: int = 0
    read_error: str = ""  # the medium failed while read (a stick pulled out): what was found stands

    @property
    def found(self) -> bool:
        """Whether any tagged data was identified."""
        return bool(self.identified_by)

    def fill(self, event: pb.Event) -> None:
        """Write the identification into an event's `exfilguard.copy` and `exfilguard.content`."""
        copy, content = event.exfilguard.copy, event.exfilguard.content
        if self.found:
            copy.identified_by = self.identified_by
            copy.confidence = self.confidence
            copy.share = self.share
            copy.sources.extend(fs_texts(self.sources[:MAX_LISTED]))
            if self.format:
                for m in self.members[:MAX_LISTED]:
                    copy.members.append(pb.Member(name=m.name, source=m.source, identified_by=m.identified_by,
                                                  share=m.share, size=m.size))
        if self.format:
            copy.members_total = self.members_total
            content.format = self.format
        content.entropy = self.entropy
        if self.refused:
            content.refused = self.refused


class _Probe:
    """Chunk keys, text features and (maybe) SHA-256 of one member or whole file."""

    def __init__(self, identifier: _Run, name: str, size: int) -> None:
        self.identifier = identifier
        self.name = name
        self.size = size
        self.seen = 0
        self.chunk_hits: dict[int, int] = {}      # source id -> bytes of its chunks found
        self.text_hits: dict[int, int] = {}       # source id -> sampled features found
        self._hit_keys: set[int] = set()
        self._text_keys: set[int] = set()
        catalog = identifier.catalog
        self._chunk_ids = catalog.chunk_ids
        self._text_ids = catalog.text_ids
        self._chunker = ChunkStream(self._chunk)
        self._sha = hashlib.sha256() if size > 0 and identifier.index.has_size(size) else None
        self._text: TextFeatures | None = None
        self._text_wanted = catalog.has_text()
        # Text features cost ~10x chunking: a text is held back (TEXT_DECIDE bytes) until its
        # chunks show whether they already identify it, and only fed to them if not.
        self._undecided: bytearray | None = None
        self.hit_bytes = 0
        self.sha256 = ""

    def _chunk(self, key: int, length: int) -> None:
        ids = self._chunk_ids(key)
        if ids and key not in self._hit_keys:
            self._hit_keys.add(key)
            self.hit_bytes += length
            for file_id in ids:
                self.chunk_hits[file_id] = self.chunk_hits.get(file_id, 0) + length

    def _feature(self, key: int) -> None:
        if sampled(key) and key not in self._text_keys:
            ids = self._text_ids(key)
            if ids:
                self._text_keys.add(key)
                for file_id in ids:
                    self.text_hits[file_id] = self.text_hits.get(file_id, 0) + 1

    def update(self, data: bytes) -> None:
        """The next bytes."""
        if self.seen == 0 and self._text_wanted and looks_like_text(data[:8192]):
            self._undecided = bytearray()
        self._chunker.update(data)
        if self._sha is not None:
            self._sha.update(data)
        self.seen += len(data)
        self.identifier.bytes_read += len(data)
        if self._undecided is not None:
            self._undecided += data
            if len(self._undecided) >= TEXT_DECIDE:
                self._decide_text()
        elif self._text is not None and self.seen - len(data) < TEXT_BYTES:
            self._text.update(data)

    def _decide_text(self) -> None:
        held, self._undecided = self._undecided, None
        cut = self._chunker.bytes - self._chunker.buffered
        if held is not None and not (cut and self.hit_bytes * 2 >= cut):
            self._text = TextFeatures(self._feature)
            self._text.update(held)

    def finish(self) -> None:
        """The member ended."""
        self._chunker.finish()
        if self._undecided is not None:
            self._decide_text()
        if self._text is not None:
            self._text.finish()
        if self._sha is not None and self.seen == self.size:
            self.sha256 = self._sha.hexdigest()
        self.identifier.probes.append(self)

    def results(self) -> list[MemberFound]:
        """Every source this probe's bytes identify, best first."""
        catalog, index = self.identifier.catalog, self.identifier.index
        if self.sha256 and not too_small(self.seen):
            path = index.match_digest(self.seen, self.sha256)
            if path is not None and not commonplace_source(path, self.sha256):
                return [MemberFound(self.name, path, "exact", 1.0, self.seen, 0.99, self.seen, self.seen,
                                    index.source_tags(path))]
        found: dict[int, MemberFound] = {}
        for file_id, matched in self.chunk_hits.items():
            source = catalog.source(file_id)
            # a licence text or git's bookkeeping is in every repository: found in the output, it
            # says nothing, whole or in part
            if source is None or too_small(source.size) or commonplace_source(source.path, source.sha256):
                continue
            share = min(1.0, matched / source.size)
            if matched < MIN_CHUNK_BYTES and share < 0.9:
                continue
            of_output = matched / max(1, min(self.seen, source.size))
            confidence = round(min(0.95, 0.6 + 0.35 * min(1.0, of_output)), 3)
            found[file_id] = MemberFound(self.name, source.path, "chunks", round(share, 4), self.seen,
                                         confidence, matched, source.size, source.tags)
        for file_id, hits in self.text_hits.items():
            source = catalog.source(file_id)
            if source is None or source.text < MIN_SAMPLE or commonplace_source(source.path, source.sha256):
                continue
            score = min(1.0, hits / source.text)
            confidence = round(0.9 * score, 3)
            if score < MIN_TEXT_SCORE or (file_id in found and found[file_id].confidence >= confidence):
                continue
            found[file_id] = MemberFound(self.name, source.path, "text", round(score, 4), self.seen,
                                         confidence, int(score * source.size), source.size, source.tags)
        return sorted(found.values(), key=lambda m: (-m.confidence, -m.matched))


class _Run:
    """One identification: its probes and the bytes they read (the identifier is shared)."""

    def __init__(self, catalog: ContentCatalog, index: FingerprintIndex) -> None:
        self.catalog = catalog
        self.index = index
        self.probes: list[_Probe] = []
        self.bytes_read = 0


class ContentIdentifier:
    """Identifies tagged content in written files and raw device bytes (see module docstring).
    Thread-safe: each call keeps its state to itself."""

    def __init__(self, catalog: ContentCatalog, index: FingerprintIndex,
                 limits: ArchiveLimits | None = None) -> None:
        self.catalog = catalog
        self.index = index
        self.limits = limits or ArchiveLimits()

    def identify_fd(self, fd: int, size: int, label: str, *, entropy: bool = True) -> Identification:
        """Identify an open written file of `size` bytes (read with pread: its offset is kept).
        Its entropy is estimated when tagged data was found or `entropy` asks for it (lineage
        ties the file to tagged data): nobody reads it otherwise."""
        # buffered: gzip and tarfile read in 8-10 KiB steps, a pread each without it
        with io.BufferedReader(_FdReader(fd, size), buffer_size=1 << 20) as reader:
            found = self._identify(reader, label, size, seekable=True)
        if size > 0 and (entropy or found.found) and not found.read_error:
            try:
                found.entropy = sample_entropy(fd, size)
            except OSError as exc:
                if exc.errno not in DEVICE_ERRNOS:
                    raise
                found.read_error = device_failure(exc, 0)
                found.refused = "; ".join(filter(None, (found.refused, found.read_error)))[:1000]
        return found

    def identify_stream(self, stream: IO[bytes], label: str, limit: int, *,
                        seekable: bool = False) -> Identification:
        """Identify the first `limit` bytes of a stream (a raw device read back)."""
        head = stream.read(min(limit, SAMPLE_BYTES))
        reader = _Bounded(head, stream, limit)
        found = self._identify(reader, label, -1, seekable=seekable)
        found.entropy = byte_entropy(head)
        return found

    def _identify(self, reader: Readable, label: str, size: int, *, seekable: bool,
                  decoded: bool = False) -> Identification:
        run = _Run(self.catalog, self.index)
        out = Identification()
        head = reader.read(512)
        reader.seek(0)
        if sniff(head):
            report = inspect_archive(reader, label, lambda name, n: _Probe(run, name, n), self.limits,
                                     seekable=seekable)
            out.format, out.members_total = report.format, report.members_total
            out.refused = "; ".join(report.notes)[:1000]
            out.read_error = report.read_error
        if not out.format:
            probe = _Probe(run, os.path.basename(label), size)  # noqa: PTH119 - a label
            try:
                reader.seek(0)
                while data := reader.read(1 << 20):
                    probe.update(data)
            except OSError as exc:
                if exc.errno not in DEVICE_ERRNOS:
                    raise
                out.read_error = out.refused = device_failure(exc, probe.seen)  # what was read still counts
            probe.finish()
        out.bytes_read = run.bytes_read
        _conclude(run, out)
        if not out.found and not out.format and seekable and not decoded:
            return self._decoded(reader, label, out)
        return out

    def _decoded(self, reader: Readable, label: str, out: Identification) -> Identification:
        """A text that matched nothing, identified again as the bytes it encodes (base64, a hex
        dump: encodings.py), if it is in such an encoding; `out` otherwise."""
        reader.seek(0)
        encoding = encodings.sniff(reader.read(SNIFF_BYTES))
        if not encoding:
            return out
        reader.seek(0)
        data, whole = encodings.decode(encoding, reader.read(MAX_ENCODED))
        if not data:
            return out
        inner = self._identify(io.BytesIO(data), label, len(data) if whole else -1, seekable=True,
                               decoded=True)
        inner.bytes_read += out.bytes_read
        if not inner.found:
            return out
        inner.format = f"{encoding}+{inner.format}" if inner.format else encoding
        return inner


def _conclude(run: _Run, out: Identification) -> None:
    found = [(probe, probe.results()) for probe in run.probes]
    found = [(probe, results) for probe, results in found if results]
    if not found:
        return
    best = [results[0] for _probe, results in found]
    everything = [m for _probe, results in found for m in results]
    if out.format:
        out.identified_by = "member"
        out.members = best
    else:
        out.identified_by = best[0].identified_by
    sources = list(dict.fromkeys(m.source for m in sorted(everything, key=lambda m: -m.matched)))
    out.sources = sources
    by_source = {m.source: m for m in sorted(everything, key=lambda m: m.matched)}
    matched = sum(m.matched for m in by_source.values())
    total = sum(m.source_size for m in by_source.values())
    out.share = round(min(1.0, matched / total), 4) if total else 0.0
    out.confidence = max(m.confidence for m in everything)
    out.tags = list(dict.fromkeys(t for m in everything for t in m.tags))


class _FdReader(io.RawIOBase):
    """A file object over pread: leaves the descriptor's own offset alone (and py7zr wants an
    io.IOBase)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self.fd = fd
        self.size = size
        self.pos = 0

    # Reads stop at the size the file had when examined: one still growing (written to as it
    # is read) cannot keep the examiner reading for ever.
    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.size - self.pos)
        data = os.pread(self.fd, left if n is None or n < 0 else min(n, left), self.pos)
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: max(0, self.size - self.pos)]
        got = os.preadv(self.fd, [view], self.pos) if len(view) else 0
        self.pos += got
        return got

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class _Bounded:
    """The first `limit` bytes of a forward-only stream; `seek(0)` replays what was read so far
    only while that is the already-read head."""

    def __init__(self, head: bytes, stream: IO[bytes], limit: int) -> None:
        self.head = head
        self.stream = stream
        self.left = limit - len(head)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        out = b""
        if self.pos < len(self.head):
            out = self.head[self.pos : self.pos + (n if n >= 0 else len(self.head))]
            self.pos += len(out)
            if n >= 0 and len(out) == n:
                return out
            n = n - len(out) if n >= 0 else n
        want = self.left if n < 0 else min(n, self.left)
        data = self.stream.read(want) if want > 0 else b""
        self.left -= len(data)
        self.pos += len(data)
        return out + data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset > len(self.head) or self.pos > len(self.head):
            raise OSError("a raw device is read forward only")
        self.pos = offset
        return offset

    def readable(self) -> bool:
        return True
