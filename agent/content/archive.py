"""Archives opened as streams: every member's bytes handed to a visitor, nothing extracted.

Formats: tar (plain, gzip, bzip2, xz, zstd), zip, 7z, and a lone gzip/bzip2/xz/zstd stream
(one member). Everything is bounded: bytes decompressed, members, time, and the compression
ratio (a zip bomb is refused once it inflates past `bomb_floor` bytes at more than
`max_ratio`:1). A member that cannot be read (encrypted, corrupt) is skipped with a note;
link members carry no data and are noted. Member names are only labels here, never paths
on disk, so a `../` or absolute name is noted as hostile and its data still fingerprinted:
renaming members must not hide them.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from common.errors import ExfilGuardError

_READ = 256 * 1024
_TAR_MAGIC_AT = 257
_COMPRESSORS = (
    (b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zst"),
)
_SINGLE = {"gz": "gzip", "bz2": "bzip2", "xz": "xz", "zst": "zstd"}
# read errors of the medium, not of the archive: a stick pulled out, a failing device
DEVICE_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.ESHUTDOWN, errno.ESTALE,
                           errno.ENOTCONN})


@dataclass(frozen=True)
class ArchiveLimits:
    """How far one archive is read before inspection stops with a note."""

    max_members: int = 20_000
    max_bytes: int = 4 << 30          # decompressed member bytes, all members
    max_seconds: float = 120.0
    max_ratio: float = 200.0          # decompressed : compressed, once past bomb_floor
    bomb_floor: int = 64 << 20


class Readable(Protocol):
    """A binary file object: read, and seek where the format needs it (zip, 7z)."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to n bytes (all that is left if n < 0)."""

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Move; returns the new position."""


class MemberWriter(Protocol):
    """Receives one member's bytes in order."""

    def update(self, data: bytes) -> None:
        """The next bytes of the member."""

    def finish(self) -> None:
        """The member ended (complete or cut short)."""


MemberVisitor = Callable[[str, int], MemberWriter]  # (name, size or -1 if unknown)


@dataclass
class ArchiveReport:
    """What opening a written file as an archive found."""

    format: str = ""                  # "" when it is not an archive this module opens
    members_total: int = 0            # regular-file members seen
    notes: list[str] = field(default_factory=list)  # refusals and oddities, in order
    complete: bool = True             # False: inspection stopped before the end
    read_error: str = ""              # the medium failed (not the archive): why, and where

    def note(self, text: str) -> None:
        """Record one refusal or oddity (bounded: the first 20)."""
        if len(self.notes) < 20:
            self.notes.append(text)


class _Stop(ExfilGuardError):
    """Inspection must stop: a limit was reached or the archive is hostile."""


def sniff(head: bytes) -> str:
    """The container format the first bytes announce: zip, 7z, tar, gz, bz2, xz, zst or ''."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    for magic, name in _COMPRESSORS:
        if head.startswith(magic):
            return name
    if head[_TAR_MAGIC_AT : _TAR_MAGIC_AT + 5] == b"ustar":
        return "tar"
    return ""


class _Budget:
    """Bytes, time and ratio spent on one archive."""

    def __init__(self, limits: ArchiveLimits, raw: _Counted) -> None:
        self.limits = limits
        self.raw = raw
        self.spent = 0
        self.deadline = time.monotonic() + limits.max_seconds

    def spend(self, n: int) -> None:
        self.spent += n
        limits = self.limits
        if self.spent > limits.max_bytes:
            raise _Stop(f"byte limit: more than {limits.max_bytes} bytes decompressed")
        if self.spent > limits.bomb_floor and self.spent > limits.max_ratio * max(self.raw.consumed, 1):
            raise _Stop(f"compression ratio over {limits.max_ratio:g}:1 (decompression bomb)")
        if time.monotonic() > self.deadline:
            raise _Stop(f"time limit: still reading after {limits.max_seconds:g} s")


class _Counted:
    """The raw file, counting the (compressed) bytes consumed for the ratio check."""

    def __init__(self, raw: Readable) -> None:
        self.raw = raw
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.consumed += len(data)
        return data

    def readable(self) -> bool:
        return True


class _Prefixed:
    """A stream whose first bytes were already read (to sniff them)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head = head
        self.rest = rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.rest.read(), b""
                return bytes(data)
            data, self.head = self.head[:n], self.head[n:]
            return data
        return bytes(self.rest.read(n))

    def readable(self) -> bool:
        return True


def _decompressor(kind: str, raw: _Prefixed) -> Any:
    if kind == "gz":
        return gzip.GzipFile(fileobj=cast(Any, raw), mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(cast(Any, raw))
    if kind == "xz":
        return lzma.LZMAFile(cast(Any, raw))
    import zstandard  # only when a zstd file shows up

    return zstandard.ZstdDecompressor().stream_reader(cast(Any, raw), read_across_frames=True)


def hostile_name(name: str) -> bool:
    """An absolute member name or one that climbs out (`../`)."""
    return name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/")


def inspect_archive(raw: Readable, label: str, visit: MemberVisitor,
                    limits: ArchiveLimits = ArchiveLimits(), *, seekable: bool = True) -> ArchiveReport:
    """Open `raw` (positioned at 0) as an archive and feed each regular member to `visit`.

    `label` names the file in notes. Never raises for bad input: corrupt, truncated,
    encrypted or hostile archives end with notes in the report and `complete` False.
    `seekable` False (a raw device) leaves out zip and 7z, whose index is at the end.
    """
    report = ArchiveReport()
    counted = _Counted(raw)
    budget = _Budget(limits, counted)
    head = counted.read(512)
    kind = sniff(head)
    if not kind:
        return report
    report.format = _SINGLE.get(kind, kind)  # refined below (tar.gz, ...) once opened
    try:
        if kind in ("zip", "7z"):
            report.format = kind
            if not seekable:
                report.note(f"{kind} on a raw device: its index is at the end, members not read")
                report.complete = False
                return report
            raw.seek(0)
            if kind == "zip":
                _zip(raw, visit, report, budget)
            else:
                _sevenzip(raw, visit, report, budget)
            return report
        stream: Any = _Prefixed(head, counted)
        if kind != "tar":
            stream = _decompressor(kind, _Prefixed(head, counted))
            inner = _read_full(stream, 512)
            if not inner:  # zstd yields nothing from a cut-off first block, and says nothing
                raise EOFError(f"nothing decompressed from {counted.consumed} bytes")
            if sniff(inner) == "tar":
                report.format = f"tar.{kind}"
                _tar(_Prefixed(inner, stream), visit, report, budget)
            else:
                report.format = _SINGLE[kind]
                _single(_Prefixed(inner, stream), _inner_name(label, kind), visit, report, budget)
            return report
        report.format = "tar"
        _tar(stream, visit, report, budget)
    except _Stop as stop:
        report.note(str(stop))
        report.complete = False
    except OSError as exc:
        report.complete = False
        if exc.errno in DEVICE_ERRNOS:
            report.read_error = device_failure(exc, counted.consumed)
            report.note(report.read_error)
        else:
            report.note(f"corrupt or truncated {report.format or kind}: {type(exc).__name__}: {exc}"[:300])
    except (EOFError, ValueError, tarfile.TarError, zipfile.BadZipFile, zlib.error,
            lzma.LZMAError, RuntimeError, NotImplementedError, struct.error, KeyError, IndexError) as exc:
        # zstandard.ZstdError and py7zr's errors derive from these or from Exception: below
        report.note(f"corrupt or truncated {report.format or kind}: {type(exc).__name__}: {exc}"[:300])
        report.complete = False
    except Exception as exc:  # a third-party decoder's own error type (zstd, py7zr): bad input
        report.note(f"unreadable {report.format or kind}: {type(exc).__name__}: {exc}"[:300])
        report.complete = False
    return report


def device_failure(exc: OSError, offset: int) -> str:
    """The note for a read the medium failed (a stick pulled out during inspection)."""
    return f"read failed after {offset} bytes: {exc.strerror or exc} (the device was removed or failed)"


def _inner_name(label: str, kind: str) -> str:
    base = os.path.basename(label)  # noqa: PTH119 - a label, not a path we open
    stem, dot, ext = base.rpartition(".")
    return stem if dot and ext.lower() in (kind, "gz", "gzip", "bz2", "xz", "zst", "zstd") else base


def _read_full(stream: Any, n: int) -> bytes:
    """n bytes, or fewer only at the end (a decompressor may return short reads)."""
    out = b""
    while len(out) < n:
        data = stream.read(n - len(out))
        if not data:
            break
        out += data
    return out


def _pump(reader: Any, writer: MemberWriter, budget: _Budget, size: int = -1) -> None:
    left = size
    try:
        while left != 0:
            data = reader.read(_READ if left < 0 else min(_READ, left))
            if not data:
                if left > 0:  # what was read is still fingerprinted (finish, below)
                    raise EOFError(f"a member ends {left} bytes short of its size")
                break
            budget.spend(len(data))
            writer.update(data)
            if left > 0:
                left -= len(data)
    finally:
        writer.finish()


def _member(report: ArchiveReport, budget: _Budget, name: str) -> None:
    report.members_total += 1
    if report.members_total > budget.limits.max_members:
        raise _Stop(f"member limit: more than {budget.limits.max_members} members")
    if hostile_name(name):
        report.note(f"hostile member name {name[:200]!r} (nothing is extracted; fingerprinted)")


def _single(stream: Any, name: str, visit: MemberVisitor, report: ArchiveReport, budget: _Budget) -> None:
    _member(report, budget, name)
    _pump(stream, visit(name, -1), budget)


def _tar(stream: Any, visit: MemberVisitor, report: ArchiveReport, budget: _Budget) -> None:
    # tarfile's stream reads 10 KiB records by default: a Python call per 10 KiB
    with tarfile.open(fileobj=stream, mode="r|", bufsize=_READ) as tar:
        for info in tar:
            if info.issym() or info.islnk():
                report.note(f"link member {info.name[:200]!r} -> {info.linkname[:200]!r} not followed")
                continue
            if not info.isreg():
                continue
            _member(report, budget, info.name)
            reader = tar.extractfile(info)
            if reader is not None:
                _pump(reader, visit(info.name, info.size), budget, info.size)


def _zip_entries(raw: Readable) -> int:
    """Members the end-of-central-directory record announces (before zipfile parses them all)."""
    end = raw.seek(0, os.SEEK_END)
    tail_len = min(end, 65536 + 22)
    raw.seek(end - tail_len)
    tail = raw.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return -1
    entries = int(struct.unpack_from("<H", tail, at + 10)[0])
    if entries == 0xFFFF:
        loc = tail.rfind(b"PK\x06\x06")
        if loc >= 0 and loc + 40 <= len(tail):
            entries = int(struct.unpack_from("<Q", tail, loc + 32)[0])
    raw.seek(0)
    return entries


def _zip(raw: Readable, visit: MemberVisitor, report: ArchiveReport, budget: _Budget) -> None:
    announced = _zip_entries(raw)
    if announced > budget.limits.max_members:
        raise _Stop(f"member limit: the zip announces {announced} members "
                    f"(limit {budget.limits.max_members})")
    with zipfile.ZipFile(raw) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                report.note(f"link member {info.filename[:200]!r} not followed")
                continue
            _member(report, budget, info.filename)
            if info.flag_bits & 0x1:
                report.note(f"encrypted member {info.filename[:200]!r} not read")
                continue
            if info.file_size > budget.limits.bomb_floor and (
                    info.file_size > budget.limits.max_ratio * max(info.compress_size, 1)):
                raise _Stop(f"compression ratio of {info.filename[:200]!r} over "
                            f"{budget.limits.max_ratio:g}:1 (zip bomb)")
            budget.raw.consumed += info.compress_size  # the ratio check counts what was read
            with archive.open(info) as reader:
                _pump(reader, visit(info.filename, info.file_size), budget, info.file_size)


def _sevenzip(raw: Readable, visit: MemberVisitor, report: ArchiveReport, budget: _Budget) -> None:
    import py7zr  # heavy: only when a 7z file shows up
    from py7zr.io import Py7zIO, WriterFactory

    class _Writer(Py7zIO):
        def __init__(self, name: str, size: int) -> None:
            self.target = visit(name, size)
            self.written = 0

        def write(self, s: bytes | bytearray) -> int:
            budget.spend(len(s))
            self.target.update(bytes(s))
            self.written += len(s)
            return len(s)

        def read(self, size: int | None = None) -> bytes:
            return b""

        def seek(self, offset: int, whence: int = 0) -> int:
            return self.written if whence else offset

        def flush(self) -> None:
            return None

        def size(self) -> int:
            return self.written

        def close(self) -> None:
            self.target.finish()

    sizes: dict[str, int] = {}

    class _Factory(WriterFactory):
        def create(self, filename: str) -> Py7zIO:
            return _Writer(filename, sizes.get(filename, -1))

    budget.raw.consumed += raw.seek(0, os.SEEK_END)  # 7z decodes from anywhere: count it all
    raw.seek(0)
    with py7zr.SevenZipFile(cast(IO[bytes], raw), mode="r") as archive:
        if archive.needs_password():
            report.note("encrypted 7z: members not read")
            report.complete = False
            return
        files = []
        for info in archive.list():
            if info.is_directory:
                continue
            if info.is_symlink:
                report.note(f"link member {info.filename[:200]!r} not followed")
                continue
            _member(report, budget, info.filename)
            sizes[info.filename] = int(info.uncompressed or 0)
            files.append(info.filename)
        if files:
            archive.extract(targets=files, factory=_Factory())
