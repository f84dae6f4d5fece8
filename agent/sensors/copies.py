"""CopyDetector: every file written onto removable media, and which tagged file it copies.

Two independent ways to tie a written file to a tagged one:
  - process lineage: the writing process opened tagged files before, or its parent,
    grandparent or process group opened a tagged file of the same name (rsync's receiver
    writes what its sender read);
  - content fingerprint: a tagged file of the same size has the same sampled hash and
    then the same full SHA-256, whatever the new name.
An archive that matches no single file is still tied to the tagged files its writer read.
"""

# ruff: noqa: PTH119

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

from agent.sensors import Emit, procinfo
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.media import RemovableMedia
from agent.sensors.staging import StagingDetector, Written, file_fields
from protos import exfilguard_pb2 as pb
from protos.events import new_event

_MAX_GROUPS = 4096       # processes / process groups remembered (oldest forgotten first)
_MAX_READS = 100_000     # tagged files remembered per process
_LINEAGE_SECONDS = 12 * 3600.0


class _Reads:
    """Tagged files one process (or process group) opened, newest last."""

    __slots__ = ("files",)

    def __init__(self) -> None:
        self.files: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()


class CopyDetector:
    """Turns removable writes into `file.write`, and identified copies into `file.copy`."""

    def __init__(self, index: FingerprintIndex, media: RemovableMedia, staging: StagingDetector,
                 emit: Emit) -> None:
        self.index = index
        self.media = media
        self.staging = staging
        self._emit = emit
        self._lock = threading.Lock()
        self._by_pid: OrderedDict[int, _Reads] = OrderedDict()
        self._by_pgid: OrderedDict[int, _Reads] = OrderedDict()

    # --------------------------------------------------------------- reads

    def note_read(self, pid: int, info: procinfo.ProcessInfo | None, path: str, tags: list[str]) -> None:
        """A process opened a tagged file (for lineage)."""
        now = time.monotonic()
        tag_tuple = tuple(tags)
        with self._lock:
            self._remember(self._by_pid, pid, path, now, tag_tuple)
            if info is not None and info.pgid > 1:
                self._remember(self._by_pgid, info.pgid, path, now, tag_tuple)

    def forget_read(self, pid: int, path: str) -> None:
        """The process wrote the tagged file it had opened: it was not reading it."""
        with self._lock:
            reads = self._by_pid.get(pid)
            if reads is not None:
                reads.files.pop(path, None)

    @staticmethod
    def _remember(table: OrderedDict[int, _Reads], key: int, path: str, now: float,
                  tags: tuple[str, ...]) -> None:
        reads = table.get(key)
        if reads is None:
            reads = table[key] = _Reads()
            while len(table) > _MAX_GROUPS:
                table.popitem(last=False)
        table.move_to_end(key)
        reads.files[path] = (now, tags)
        reads.files.move_to_end(path)
        if len(reads.files) > _MAX_READS:
            reads.files.popitem(last=False)

    def _lineage(self, written: Written) -> list[tuple[str, tuple[str, ...]]]:
        """Tagged files behind a write: what the writer read recently, oldest first; else
        same-named files its parent or grandparent read."""
        cutoff = time.monotonic() - _LINEAGE_SECONDS
        with self._lock:
            reads = self._by_pid.get(written.pid)
            own = [(p, tags) for p, (t, tags) in reads.files.items() if t >= cutoff] if reads else []
        if own or written.info is None:
            return own
        name = os.path.basename(written.path)
        ancestor = written.info.ppid
        for _generation in range(2):
            if ancestor <= 1:
                break
            with self._lock:
                reads = self._by_pid.get(ancestor)
                same = [(p, tags) for p, (t, tags) in reads.files.items()
                        if t >= cutoff and os.path.basename(p) == name] if reads else []
            if same:
                return same[-1:]
            parent = procinfo.read_proc(ancestor)
            ancestor = parent.ppid if parent is not None else 0
        if written.info.pgid > 1:
            with self._lock:
                reads = self._by_pgid.get(written.info.pgid)
                same = [(p, tags) for p, (t, tags) in reads.files.items()
                        if t >= cutoff and os.path.basename(p) == name] if reads else []
            return same[-1:]
        return []

    # -------------------------------------------------------------- writes

    def note_write(self, written: Written) -> bool:
        """A file was written; if it is on removable media emit file.write (and file.copy). True if so."""
        mount = self.media.mount_for(written.path)
        if mount is None:
            return False
        own_fd = None
        if written.fd is None:
            try:
                own_fd = os.open(written.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                own_fd = None
            written.fd = own_fd
        try:
            self._check(written, mount.device, mount.mount)
        finally:
            if own_fd is not None:
                os.close(own_fd)
                written.fd = None
        return True

    def _check(self, written: Written, device: pb.Device, mount: pb.Mount) -> None:
        if written.fd is not None:
            try:
                written.size = os.fstat(written.fd).st_size
            except OSError:
                written.fd = None
        match = self.index.match(written.fd, written.size) if written.fd is not None else None
        lineage = self._lineage(written)
        read_paths = {p: tags for p, tags in lineage}
        source: tuple[str, tuple[str, ...]] | None = None
        methods: list[str] = []
        sha = ""
        if match is not None:
            src_path, sha = match
            source = (src_path, self.index.tags_of(src_path))
            methods.append("fingerprint")
            if src_path in read_paths:
                methods.append("process")
        elif lineage:
            name = os.path.basename(written.path)
            same_name = [(p, t) for p, t in lineage if os.path.basename(p) == name]
            if same_name:
                source = same_name[-1]
            elif len(lineage) == 1:
                source = lineage[0]
            else:
                # An archive or a transformed copy: tie it to what the writer read.
                common = os.path.commonpath([p for p, _ in lineage])
                tags = tuple(dict.fromkeys(t for _, ts in lineage for t in ts))
                source = (common, tags)
            methods.append("process")
        files_read = len(lineage)
        archive_reads = self.staging.note_write(written)

        write = self._event("file.write", written, device, mount)
        if sha:
            write.file.hash.sha256 = sha
        if source is not None:
            write.tags.extend(source[1])
            write.exfilguard.copy.files_read = max(files_read, archive_reads)
        self._emit(write)
        if source is None:
            return
        copy = self._event("file.copy", written, device, mount)
        copy.tags.extend(source[1])
        if sha:
            copy.file.hash.sha256 = sha
        copy.exfilguard.source.path = source[0]
        copy.exfilguard.source.tags.extend(source[1])
        if sha:
            copy.exfilguard.source.sha256 = sha
        copy.exfilguard.copy.method.extend(methods)
        copy.exfilguard.copy.files_read = max(files_read, archive_reads)
        self._emit(copy)

    @staticmethod
    def _event(action: str, written: Written, device: pb.Device, mount: pb.Mount) -> pb.Event:
        event = new_event(action, file=file_fields(written.path, written.size))
        event.device.CopyFrom(device)
        event.exfilguard.mount.CopyFrom(mount)
        procinfo.describe(event, written.info, written.attribution, written.pid)
        return event
