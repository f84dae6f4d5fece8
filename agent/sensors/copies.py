"""CopyDetector: every file written onto removable media, and which tagged file it copies.

Two independent ways to tie a written file to a tagged one:
  - process lineage: the writing process opened tagged files before, or its parent,
    grandparent or process group opened a tagged file of the same name (rsync's receiver
    writes what its sender read);
  - content fingerprint: a tagged file of the same size has the same sampled hash and
    then the same full SHA-256, whatever the new name; failing that, the Examiner opens it
    (agent/content: archive members, chunks, text) off this thread, and the file.copy
    follows with what it found.
An archive that matches no single file is still tied to the tagged files its writer read.
"""

# ruff: noqa: PTH119

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from agent.content.examiner import Examiner
from agent.content.identify import Identification
from agent.sensors import Emit, procinfo
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.media import RemovableMedia, RemovableMount
from agent.sensors.staging import StagingDetector, Written, file_fields
from protos import exfilguard_pb2 as pb
from protos.events import new_event

_MAX_GROUPS = 4096       # processes / process groups remembered (oldest forgotten first)
_MAX_READS = 100_000     # tagged files remembered per process
_LINEAGE_SECONDS = 12 * 3600.0
_CATCH_UP_MARGIN_SECONDS = 2.0  # mount to mount-table wake-up is milliseconds
_COARSE_CLOCK_SECONDS = 0.02
LINEAGE_PROCESS_CONFIDENCE = 0.3  # the writer read tagged files; its bytes were not matched


class _Reads:
    """Tagged files one process (or process group) opened, newest last."""

    __slots__ = ("by_name", "files")

    def __init__(self) -> None:
        self.files: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self.by_name: dict[str, str] = {}  # base name -> the latest path read with it

    def same_name(self, name: str, cutoff: float) -> tuple[str, tuple[str, ...]] | None:
        """The latest tagged file read with this base name, if recent."""
        path = self.by_name.get(name)
        entry = self.files.get(path) if path is not None else None
        if path is None or entry is None or entry[0] < cutoff:
            return None
        return path, entry[1]


@dataclass(frozen=True, slots=True)
class _Found:
    """What the write's own thread found: exact fingerprint and lineage."""

    source: tuple[str, tuple[str, ...]] | None
    methods: list[str]
    sha256: str
    files_read: int


class CopyDetector:
    """Turns removable writes into `file.write`, and identified copies into `file.copy`."""

    def __init__(self, index: FingerprintIndex, media: RemovableMedia, staging: StagingDetector,
                 emit: Emit, examiner: Examiner | None = None) -> None:
        self.index = index
        self.examiner = examiner
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
        reads.by_name[os.path.basename(path)] = path
        if len(reads.files) > _MAX_READS:
            old, _entry = reads.files.popitem(last=False)
            if reads.by_name.get(os.path.basename(old)) == old:
                del reads.by_name[os.path.basename(old)]

    def _lineage(self, written: Written, fingerprint_source: str | None
                 ) -> tuple[tuple[str, tuple[str, ...]] | None, bool, int]:
        """(source, writer read the fingerprint source, tagged files the writer read).

        Lineage source: the fingerprint's source if the writer read it; else the file of the
        same name it read; else its only tagged read; else (an archive, a transformed copy)
        the common directory of all it read. Then same-named reads of the writer's parent,
        grandparent and process group. Cost is O(1) per write except for that archive case.
        """
        cutoff = time.monotonic() - _LINEAGE_SECONDS
        name = os.path.basename(written.path)
        with self._lock:
            reads = self._by_pid.get(written.pid)
            count = len(reads.files) if reads is not None else 0
            if reads is not None and count:
                if fingerprint_source is not None:
                    entry = reads.files.get(fingerprint_source)
                    return None, entry is not None and entry[0] >= cutoff, count
                same = reads.same_name(name, cutoff)
                if same is not None:
                    return same, False, count
                recent = [(p, tags) for p, (t, tags) in reads.files.items() if t >= cutoff]
                if len(recent) == 1:
                    return recent[0], False, count
                if recent:
                    common = os.path.commonpath([p for p, _ in recent])
                    return (common, tuple(dict.fromkeys(t for _, ts in recent for t in ts))), False, count
        if fingerprint_source is not None or written.info is None:
            return None, False, count
        ancestor = written.info.ppid
        for _generation in range(2):
            if ancestor <= 1:
                break
            with self._lock:
                reads = self._by_pid.get(ancestor)
                same = reads.same_name(name, cutoff) if reads is not None else None
            if same is not None:
                return same, False, count
            parent = procinfo.read_proc(ancestor)
            ancestor = parent.ppid if parent is not None else 0
        if written.info.pgid > 1:
            with self._lock:
                reads = self._by_pgid.get(written.info.pgid)
                same = reads.same_name(name, cutoff) if reads is not None else None
            if same is not None:
                return same, False, count
        return None, False, count

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
        source: tuple[str, tuple[str, ...]] | None = None
        methods: list[str] = []
        sha = ""
        if match is not None:
            src_path, sha = match
            source = (src_path, self.index.tags_of(src_path))
            methods.append("fingerprint")
        by_process, read_source, files_read = self._lineage(written, match[0] if match else None)
        if read_source:
            methods.append("process")
        elif source is None and by_process is not None:
            source = by_process
            methods.append("process")
        files_read = max(files_read, self.staging.note_write(written, staged=False))

        write = self._event("file.write", written, device, mount)
        if sha:
            write.file.hash.sha256 = sha
        if source is not None:
            write.tags.extend(source[1])
            write.exfilguard.copy.files_read = files_read
        self._emit(write)
        found = _Found(source, methods, sha, files_read)
        if match is None and written.size > 0 and self.examiner is not None and self.examiner.examine(
                written.path, lambda content: self._report(written, device, mount, found, content)):
            return  # file.copy (if any) once its content is examined
        self._report(written, device, mount, found, None)

    def _report(self, written: Written, device: pb.Device, mount: pb.Mount, found: _Found,
                content: Identification | None) -> None:
        """Emit the file.copy, on content evidence first, else on lineage."""
        source, methods = found.source, list(found.methods)
        if content is not None and content.found:
            source = (content.sources[0], tuple(content.tags))
            methods = ["fingerprint", *(["process"] if found.source is not None else [])]
        if source is None:
            return
        copy = self._event("file.copy", written, device, mount)
        copy.tags.extend(source[1])
        if found.sha256:
            copy.file.hash.sha256 = found.sha256
            copy.exfilguard.source.sha256 = found.sha256
        copy.exfilguard.source.path = source[0]
        copy.exfilguard.source.tags.extend(source[1])
        copy.exfilguard.copy.method.extend(methods)
        copy.exfilguard.copy.files_read = found.files_read
        if content is not None:
            content.fill(copy)
        if found.sha256:
            copy.exfilguard.copy.identified_by = "exact"
            copy.exfilguard.copy.confidence = 1.0
            copy.exfilguard.copy.share = 1.0
            copy.exfilguard.copy.sources.append(source[0])
        elif not copy.exfilguard.copy.identified_by:
            # the writer read tagged files; nothing in the bytes shows they are here: a guess
            copy.exfilguard.copy.identified_by = "lineage-process"
            copy.exfilguard.copy.confidence = LINEAGE_PROCESS_CONFIDENCE
        self._emit(copy)

    def catch_up(self, mount: RemovableMount, watched_at: float, limit: int = 10_000) -> int:
        """Report files written on a new mount before its watch was in place (at `watched_at`,
        wall clock): changed (ctime) between just before the mount was seen and then; later
        changes are the watch's. Returns how many. Runs in its own thread."""
        if not mount.seen_at:
            return 0  # present at agent start: what happened before is the agent's own gap
        since = mount.seen_at - _CATCH_UP_MARGIN_SECONDS
        # file times come from a coarse kernel clock: stay clear of the watch's side
        until = watched_at - _COARSE_CLOCK_SECONDS
        found = 0
        stack, seen = [mount.point], 0
        while stack and seen < limit:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        seen += 1
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if since <= st.st_ctime < until:
                                found += 1
                                self.note_write(Written(path=entry.path, size=st.st_size))
            except OSError:
                continue  # unmounted meanwhile, or unreadable
        return found

    @staticmethod
    def _event(action: str, written: Written, device: pb.Device, mount: pb.Mount) -> pb.Event:
        event = new_event(action, file=file_fields(written.path, written.size))
        event.device.CopyFrom(device)
        event.exfilguard.mount.CopyFrom(mount)
        procinfo.describe(event, written.info, written.attribution, written.pid)
        return event
