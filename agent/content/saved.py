"""The content catalog saved in the agent's state directory: a restart does not read every
tagged file again.

One file, `content-catalog.bin`: a magic line, a JSON header (format, byte order, table sizes,
and each source: id, path, size, mtime, tags, chunk and text counts, SHA-256 and sampled hash),
the chunk and text tables' slots, and a SHA-256 of everything before it. Written to a
temporary name and renamed over the old one (a crash leaves the old file or the new one).

Loading checks the magic, the format (the chunker's parameters and the feature keys' hash:
fingerprints made another way cannot be compared), the byte order, the SHA-256, the sizes
(`MAX_BYTES`, ids and table sizes in range) and every field of every source. Any failure is a
`SavedCatalogError` naming the file and the reason: the caller logs it and fingerprints the
tagged files again. Whether each source still describes its tagged file (same size and mtime)
is the catalog's check, against the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.content.chunks import AVG_CHUNK, KEY_BITS, MAX_CHUNK, MAX_ID, MIN_CHUNK, FeatureTable
from agent.content.textsim import SAMPLE_MAX
from common.errors import ExfilGuardError

FILE_NAME = "content-catalog.bin"
MAGIC = b"EXFILGUARD-CONTENT-CATALOG\n"
# what makes two fingerprints comparable: change it with the chunker or the feature keys
FORMAT = f"1 fastcdc {MIN_CHUNK}/{AVG_CHUNK}/{MAX_CHUNK} blake2b-{KEY_BITS} text blake2b-64/{SAMPLE_MAX}"
MAX_BYTES = 1 << 30
_LENGTH = 8


class SavedCatalogError(ExfilGuardError):
    """The saved catalog at `path` cannot be used: `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"saved content catalog {path}: {reason}")


@dataclass(frozen=True, slots=True)
class SavedSource:
    """One tagged file as it was fingerprinted."""

    file_id: int
    path: str
    size: int
    mtime: int
    tags: tuple[str, ...]
    chunks: int
    text: int
    sha256: str
    sample: bytes


@dataclass
class SavedCatalog:
    """What a saved catalog holds."""

    sources: list[SavedSource]
    chunks: FeatureTable
    text: FeatureTable


def save(path: str, catalog: SavedCatalog) -> None:
    """Write the catalog to `path` (atomically: a temporary file renamed over it)."""
    chunks, text = catalog.chunks.to_bytes(), catalog.text.to_bytes()
    header = json.dumps({
        "format": FORMAT, "byteorder": sys.byteorder, "chunks": len(chunks), "text": len(text),
        "sources": [[s.file_id, s.path, s.size, s.mtime, list(s.tags), s.chunks, s.text, s.sha256,
                     s.sample.hex()] for s in catalog.sources],
    }, separators=(",", ":")).encode()
    digest = hashlib.sha256()
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as out:  # noqa: PTH123 - the state directory's own file
        for part in (MAGIC, len(header).to_bytes(_LENGTH, "little"), header, chunks, text):
            digest.update(part)
            out.write(part)
        out.write(digest.digest())
        out.flush()
        os.fsync(out.fileno())
    Path(temporary).replace(path)


def load(path: str) -> SavedCatalog | None:
    """The catalog saved at `path`; None if there is none. Raises SavedCatalogError when the
    file is there but cannot be used."""
    try:
        with open(path, "rb") as fh:  # noqa: PTH123 - the state directory's own file
            blob = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SavedCatalogError(path, f"not readable: {exc.strerror}") from exc
    if len(blob) > MAX_BYTES:
        raise SavedCatalogError(path, f"larger than {MAX_BYTES} bytes")
    body, digest = blob[:-32], blob[-32:]
    if not body.startswith(MAGIC):
        raise SavedCatalogError(path, "not a saved content catalog (no magic line)")
    if hashlib.sha256(body).digest() != digest:
        raise SavedCatalogError(path, "checksum mismatch (truncated or altered)")
    at = len(MAGIC) + _LENGTH
    length = int.from_bytes(body[len(MAGIC) : at], "little")
    try:
        header = json.loads(body[at : at + length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SavedCatalogError(path, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SavedCatalogError(path, "header is not an object")
    if header.get("format") != FORMAT:
        raise SavedCatalogError(path, f"made by another fingerprint format ({header.get('format')!r})")
    if header.get("byteorder") != sys.byteorder:
        raise SavedCatalogError(path, "made on a machine of another byte order")
    start = at + length
    chunk_bytes, text_bytes = header.get("chunks"), header.get("text")
    if not isinstance(chunk_bytes, int) or not isinstance(text_bytes, int) or chunk_bytes < 0 \
            or text_bytes < 0 or start + chunk_bytes + text_bytes != len(body):
        raise SavedCatalogError(path, "table sizes do not add up to the file's")
    try:
        chunks = FeatureTable.from_bytes(body[start : start + chunk_bytes])
        text = FeatureTable.from_bytes(body[start + chunk_bytes :])
        sources = [_source(raw) for raw in header.get("sources", [])]
    except (ValueError, TypeError) as exc:
        raise SavedCatalogError(path, str(exc)) from exc
    if len({s.file_id for s in sources}) != len(sources) or len({s.path for s in sources}) != len(sources):
        raise SavedCatalogError(path, "a file id or path appears twice")
    return SavedCatalog(sources, chunks, text)


def remove(path: str) -> None:
    """Forget the saved catalog (an unusable one is not read again)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # noqa: PTH108 - the state directory's own file


def _source(raw: Any) -> SavedSource:
    if not isinstance(raw, list) or len(raw) != 9:
        raise ValueError(f"a source is not a list of 9 fields: {str(raw)[:100]}")
    file_id, path, size, mtime, tags, chunks, text, sha256, sample = raw
    ints = (file_id, size, mtime, chunks, text)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in ints) or not 0 < file_id <= MAX_ID \
            or size <= 0 or chunks < 0 or text < 0:
        raise ValueError(f"a source's numbers are out of range: {str(raw)[:100]}")
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ValueError(f"a source's path is not absolute: {str(path)[:100]}")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{path}: tags are not strings")
    if not isinstance(sha256, str) or len(sha256) != 64 or not isinstance(sample, str) or len(sample) != 64:
        raise ValueError(f"{path}: digests are not SHA-256 hex")
    try:
        int(sha256, 16)
        sampled = bytes.fromhex(sample)
    except ValueError as exc:
        raise ValueError(f"{path}: digests are not hex") from exc
    return SavedSource(file_id, path, size, mtime, tuple(tags), chunks, text, sha256, sampled)
