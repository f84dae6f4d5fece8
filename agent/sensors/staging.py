"""StagingDetector: the preparation before a theft, mass reads of tagged files and archives built from them.

Fed by the file sensors: every tagged read by a known pid, and every close-after-write by
a pid that has read tagged files. Emits `file.mass_read` (one process read at least N
distinct tagged files within the window) and `file.archive` (such a process, or a pipeline
it feeds, wrote an archive or encrypted container, anywhere, while it read them: an office suite
that read a tagged file this morning and now saves an .odt, a zip, is not building an archive of
it). The archive itself becomes a
derived file in the fingerprint index (see lineage.py), so copying it to a stick later is a
`file.copy` of tagged data.
"""

# ruff: noqa: PTH120

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice

from agent.sensors import Emit, procinfo, provenance
from common.agentconfig import SensorSettings
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, new_event

ARCHIVE_SUFFIXES = (
    ".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".tbz2", ".xz", ".txz", ".zst", ".7z", ".rar",
    ".gpg", ".pgp", ".asc", ".enc", ".age", ".cpio",
)
# (offset, magic) of formats an archive or encrypted container starts with
_MAGIC = (
    (0, b"PK\x03\x04"), (0, b"\x1f\x8b"), (0, b"BZh"), (0, b"\xfd7zXZ\x00"), (0, b"7z\xbc\xaf\x27\x1c"),
    (0, b"\x28\xb5\x2f\xfd"), (0, b"Rar!"), (0, b"Salted__"), (257, b"ustar"), (0, b"070701"),
)
_MAX_PIDS = 4096        # processes tracked at once (oldest forgotten first)
_MAX_FILES_PER_PID = 100_000


def looks_like_archive(path: str, fd: int | None) -> bool:
    """By name or by the first bytes: zip, tar, gzip, xz, 7z, zstd, rar, openssl, cpio."""
    if path.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    if fd is None:
        return False
    try:
        head = os.pread(fd, 264, 0)
    except OSError:
        return False
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _MAGIC)


@dataclass(slots=True)
class Written:
    """A file some process finished writing, as the file sensors saw it."""

    path: str
    size: int
    pid: int = 0
    info: procinfo.ProcessInfo | None = None
    fd: int | None = None  # open on the written file when fanotify handed one over
    attribution: str = procinfo.NONE
    writers: tuple[int, ...] = ()  # other processes seen writing into it (not the closer)
    late: tuple[float, float] | None = None  # found after the fact: the window it was written in
    # the file's owner, read while `fd` was open: names the user of a write whose process was
    # gone, in its file.copy too, which the examiner emits after `fd` was closed
    owner: int = -1


@dataclass
class _Reader:
    files: OrderedDict[str, float] = field(default_factory=OrderedDict)  # path -> last read time
    tags: list[str] = field(default_factory=list)
    reported_at: float = 0.0
    info: procinfo.ProcessInfo | None = None


class StagingDetector:
    """Counts distinct tagged files read per process and spots archives they write."""

    def __init__(self, settings: SensorSettings, emit: Emit) -> None:
        self._threshold = settings.mass_read_files
        self._window = settings.mass_read_window_seconds
        self._archive_min = settings.archive_min_files
        self._emit = emit
        self._lock = threading.Lock()
        self._readers: OrderedDict[int, _Reader] = OrderedDict()

    def note_read(self, pid: int, info: procinfo.ProcessInfo | None, path: str, tags: list[str],
                  at: float | None = None) -> None:
        """A process read a tagged file (`at`: when, on the monotonic clock; default now)."""
        now = time.monotonic() if at is None else at
        report: tuple[_Reader, int, str] | None = None
        with self._lock:
            reader = self._readers.get(pid)
            if reader is None:
                reader = self._readers[pid] = _Reader()
                while len(self._readers) > _MAX_PIDS:
                    self._readers.popitem(last=False)
            self._readers.move_to_end(pid)
            if info is not None:
                reader.info = info
            reader.files[path] = now
            reader.files.move_to_end(path)
            if len(reader.files) > _MAX_FILES_PER_PID:
                reader.files.popitem(last=False)
            reader.tags.extend(t for t in tags if t not in reader.tags)
            # counted only when a report may be due: not at every read of a reported burst
            recent = self._recent(reader, now) if now - reader.reported_at >= self._window else 0
            if recent >= self._threshold:
                reader.reported_at = now
                report = (reader, recent, os.path.dirname(path))
        if report is not None:
            reader, count, where = report
            event = new_event("file.mass_read", tags=reader.tags,
                              file=pb.File(path=fs_text(where), type="dir"))
            event.exfilguard.count = count
            event.event.reason = f"{count} tagged files read within {self._window:g}s"
            procinfo.describe(event, reader.info, procinfo.EXACT if reader.info else procinfo.NONE, pid)
            self._emit(event)

    def _recent(self, reader: _Reader, now: float) -> int:
        """Distinct files read within the window, counted from the newest and no further than
        the threshold: O(threshold) per read, not O(files read)."""
        cutoff = now - self._window
        count = 0
        for seen in reversed(reader.files.values()):
            if seen < cutoff or count >= self._threshold:
                break
            count += 1
        return count

    def files_read_since(self, pid: int, moment: float) -> int:
        """Distinct tagged files this pid read at or after `moment` (monotonic clock)."""
        with self._lock:
            reader = self._readers.get(pid)
            if reader is None:
                return 0
            count = 0
            for seen in reversed(reader.files.values()):  # newest last: stop at the first older
                if seen < moment:
                    break
                count += 1
            return count

    def files_read(self, pid: int) -> tuple[int, list[str], list[str]]:
        """(count, tags, a few paths) of tagged files this pid has read."""
        with self._lock:
            reader = self._readers.get(pid)
            if reader is None:
                return 0, [], []
            # the last three from the end: a cp -r of 2,000 tagged files asks at every write
            return len(reader.files), list(reader.tags), list(islice(reversed(reader.files), 3))[::-1]

    def wants_pid(self, pid: int) -> bool:
        """Whether writes by this pid should be looked at (it read enough tagged files)."""
        reader = self._readers.get(pid)  # lock-free read: a dict lookup is atomic
        return reader is not None and len(reader.files) >= self._archive_min

    def note_write(self, written: Written, *, flow_files: int = 0, flow_tags: tuple[str, ...] = (),
                   device: pb.Device | None = None, mount: pb.Mount | None = None) -> int:
        """A process wrote a file; emits `file.archive` when it is an archive of tagged reads.

        Returns the number of tagged files the writer had read (0: not a staging write).
        `flow_files`, `flow_tags`: tagged data that reached the writer through its pipeline
        (tar czf: gzip writes what tar read). `device`, `mount`: the removable medium it was
        written on, which the archive event names (the backup drive, or a stick).
        """
        count, tags, _sample = self.files_read(written.pid)
        if count >= self._archive_min and flow_files < self._archive_min:
            # an archive is built while its files are read (tar, zip, 7z and zipfile create the
            # archive first, then read each file into it): reads long before its birth are a
            # long-lived program's, which says nothing of what it now saves. The pipeline's
            # byte evidence (flow_files) is judged by lineage and stands on its own.
            count = self.files_read_since(written.pid, _born_monotonic(written.fd))
        if flow_files > count:
            count, tags = flow_files, list(dict.fromkeys([*tags, *flow_tags]))
        if count < self._archive_min or not looks_like_archive(written.path, written.fd):
            return 0
        event = new_event("file.archive", tags=tags, file=file_fields(written.path, written.size))
        event.exfilguard.count = count
        event.exfilguard.copy.files_read = count
        event.event.reason = f"archive written by a process that read {count} tagged files"
        describe_writer(event, written)
        if device is not None:
            event.device.CopyFrom(device)
        if mount is not None:
            event.exfilguard.mount.CopyFrom(mount)
        self._emit(event)
        return count


def describe_writer(event: pb.Event, written: Written) -> None:
    """The process of a written file's event; one gone before its account was read (or known by
    its exec alone) leaves the user to the file's owner, as `inferred`: gzip, forked by the
    backup account's tar, named no user, and the backup job's exception never applied."""
    procinfo.describe(event, written.info, written.attribution, written.pid)
    if (written.info is None or written.info.uid < 0) and written.late is None:
        if written.owner < 0 and written.fd is not None:
            written.owner = procinfo.file_owner(written.fd)
        if written.owner >= 0:
            procinfo.owner(event, written.owner)


def _born_monotonic(fd: int | None) -> float:
    """When a written file was born, less the lineage slack, on the monotonic clock the reads are
    kept in; where the file system keeps no birth time, as lineage assumes (a few seconds ago)."""
    now_wall, now = time.time(), time.monotonic()
    born = provenance.created_at(fd) if fd is not None else None
    if born is None:
        born = now_wall - 5 * provenance.SLACK_SECONDS
    return now - (now_wall - born) - provenance.SLACK_SECONDS


def file_fields(path: str, size: int) -> pb.File:
    """ECS file fields of a regular file."""
    path = fs_text(path)
    name = path.rpartition(os.sep)[2]  # os.path.basename, without its calls (once per file event)
    ext = name.rsplit(".", 1)[1] if "." in name.strip(".") else ""
    return pb.File(path=path, size=size, name=name, extension=ext, type="file")
