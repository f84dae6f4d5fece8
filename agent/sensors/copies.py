"""CopyDetector: every file written onto removable media, and which tagged data it holds.

Ways to tie a written file to tagged data, strongest first:
  - content: the whole file equals a tagged file (sampled hash, then the full SHA-256,
    whatever the new name); failing that, the Examiner opens it (agent/content: archive
    members, chunks, text) off this thread, and the file.copy follows with what it found;
  - lineage (lineage.py, provenance.py): the processes that wrote the file, their parents
    and whatever fed their pipes read tagged data: with byte evidence while the file was
    written, or only at some point (a guess, low confidence). A file equal to a derived one
    (an archive staged in /tmp) carries that file's provenance.
The stronger of content and lineage decides the file.copy.
"""


from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from agent.content.commonplace import commonplace_source, too_small
from agent.content.encodings import wide_text
from agent.content.examiner import Examiner
from agent.content.identify import Identification
from agent.content.textsim import looks_like_text
from agent.sensors import Emit, procinfo, provenance
from agent.sensors.failures import sensor_gap
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.lineage import DataFlow, SourceRead
from agent.sensors.media import RemovableMedia, RemovableMount
from agent.sensors.provenance import Provenance
from agent.sensors.secondlook import SecondLook, Waiting
from agent.sensors.slices import DerivedSlices
from agent.sensors.staging import StagingDetector, Written, describe_writer, file_fields
from protos import exfilguard_pb2 as pb
from protos.events import fs_text, fs_texts, new_event

log = logging.getLogger(__name__)

REMEMBERED_WRITES = 4096  # removable writes remembered as reported (a catch-up skips them)
CATCH_UP_MARGIN_SECONDS = 2.0  # mount to mount-table wake-up is milliseconds
_COARSE_CLOCK_SECONDS = 0.02



@dataclass(frozen=True, slots=True)
class _Found:
    """What the write's own thread found: exact hash or lineage, and how."""

    provenance: Provenance | None
    methods: list[str]
    sha256: str
    files_read: int
    first: str = ""  # event.id of the write's file.write
    key: tuple[int, int, int, int] | None = None  # (st_dev, st_ino, st_size, st_mtime_ns) as judged


class CopyDetector:
    """Turns removable writes into `file.write`, and identified copies into `file.copy`."""

    def __init__(self, index: FingerprintIndex, media: RemovableMedia, staging: StagingDetector,
                 emit: Emit, *, examiner: Examiner | None = None, flow: DataFlow | None = None) -> None:
        self.index = index
        self.media = media
        self.staging = staging
        self.examiner = examiner
        self.flow = flow if flow is not None else DataFlow()
        self.slices = DerivedSlices(index)
        self.volumes = provenance.Volumes()  # a writer's outputs one after the other (7z -v)
        # writes judged without evidence, judged again when a derived file ties them later
        self.second_look = SecondLook(self._rejudge)
        index.watch_derived(self.second_look.fact)
        self.started_at = time.time()  # before: the late examination's (late.py)
        self._emit = emit
        # (device serial, path) -> (size, mtime ns) of the files written to removable media lately,
        # as they were reported: a stick unplugged right after a write and plugged in again at
        # once shows them changed just before its new mount, and they were reported already
        self._reported: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self._reported_lock = threading.Lock()

    # --------------------------------------------------------------- reads

    def note_read(self, pid: int, info: procinfo.ProcessInfo | None, path: str, tags: list[str],
                  size: int = 0, *, at: float | None = None) -> None:
        """A process opened a tagged file (for lineage); `at`: when it read it (default now)."""
        del info  # the flow reads what it needs from /proc while the process lives
        self.flow.note_read(pid, [SourceRead(path, tuple(tags), size, time.time() if at is None else at)])

    def forget_read(self, pid: int, path: str) -> None:
        """The process wrote the tagged file it had opened: it was not reading it."""
        self.flow.forget_read(pid, path)

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
            if written.late is None and written.fd is not None:
                self._remember(mount.device.serial, written.path, written.fd)
        finally:
            if own_fd is not None:
                os.close(own_fd)
                written.fd = None
        return True

    def _equal(self, fd: int, size: int, written: Written) -> tuple[str, str] | None:
        """(path, SHA-256) of the tagged or derived file this one equals, when that is evidence:
        never commonplace content (a git template, git's bookkeeping, a skeleton file: in every
        repository); a few bytes (a one-line requirements.txt is in every project) only when the
        writers read that very file (rsync's receiver, fed by its sender) or as a copy of what
        the agent saw staged from tagged data."""
        match = self.index.match(fd, size)
        writers = [p for p in dict.fromkeys((written.pid, *written.writers)) if p]
        if match is not None and too_small(size) and not (writers and self.flow.reached(writers, match[0])):
            staged = self.index.match_digest(size, match[1], derived=True) if match[1] else None
            match = (staged, match[1]) if staged is not None else None
        return None if match is None or commonplace_source(*match) else match

    def identify(self, written: Written) -> tuple[Provenance | None, str, list[str], bool]:
        """(provenance, SHA-256 if the whole file matched, methods, whether it equals a
        tagged file) of a written file, by hash and lineage; content is the examiner's."""
        if written.fd is not None:
            try:
                written.size = os.fstat(written.fd).st_size
            except OSError:
                written.fd = None
        match = self._equal(written.fd, written.size, written) if written.fd is not None else None
        methods: list[str] = []
        found: Provenance | None = None
        sha = ""
        tagged = False
        if match is not None:
            src_path, sha = match
            methods.append("fingerprint")
            # a copy of a derived file has the derived file's evidence, and names its sources
            found = self.index.provenance(src_path)
            if found is None:
                tagged = True
                make = provenance.exact if sha else provenance.sampled  # "": too large to hash whole
                found = make(src_path, self.index.source_tags(src_path), written.size)
        if (found is None or not found.evidence) and written.fd is not None \
                and (part := self.slices.find(written.fd, written.size)) is not None:
            # one part of a derived file (split of an archive staged in /tmp): its provenance,
            # also over a guess made of the part itself (split read the archive before it was
            # known as derived, or wrote a last part too small for byte evidence)
            whole = self.index.provenance(part.path)
            if whole is not None and (found is None or whole.evidence):
                found = whole
                if "fingerprint" not in methods:
                    methods.append("fingerprint")
                log.info("%s is bytes %d-%d of %s, derived from %d tagged files", written.path,
                         part.offset, part.offset + written.size, part.now or part.path, whole.files)
        writers = [p for p in dict.fromkeys((written.pid, *written.writers)) if p]
        if writers and found is None:
            flow = self.flow.flow(writers)
            if flow.sources:
                created = provenance.created_at(written.fd) if written.fd is not None else None
                text = written.fd is not None and written_text(written.fd)
                found = provenance.by_lineage(flow, written.size, self.volumes.start(written.pid, created),
                                              text=text)
                self.volumes.closed(written.pid, created, found)
                methods.append("process")
        elif writers and found is not None and self.flow.reached(writers, found.source):
            methods.append("process")  # the writer read the very file it matches
        return found, sha, methods, tagged

    def _check(self, written: Written, device: pb.Device, mount: pb.Mount) -> None:
        if (written.info is None or written.info.uid < 0) and written.late is None and written.fd is not None:
            written.owner = procinfo.file_owner(written.fd)
        found, sha, methods, tagged = self.identify(written)
        if found is not None and found.identified_by == provenance.LINEAGE_BYTES:
            files_read = self.staging.note_write(written, flow_files=found.files, flow_tags=tuple(found.tags),
                                                 device=device, mount=mount)
        else:
            files_read = self.staging.note_write(written, device=device, mount=mount)
        evidence = found is not None and found.evidence
        write = self._event("file.write", written, device, mount)
        if sha:
            write.file.hash.sha256 = sha
        if found is not None:
            if evidence:  # a guess does not make the write one of tagged data
                write.tags.extend(found.tags)
            write.exfilguard.copy.files_read = max(found.files, files_read)
        self._emit(write)
        result = _Found(found, methods, sha, files_read, write.event.id, _key(written.fd))
        # entropy describes opaque output that lineage ties to tagged data; nothing reads it
        # for a file nothing ties to tagged data (most of what lands on a stick)
        if not tagged and written.size > 0 and self.examiner is not None and self.examiner.examine(
                written.path, lambda content: self._report(written, device, mount, result, content),
                fd=_dup(written.fd), entropy=found is not None):
            return  # file.copy (if any) once its content is examined
        self._report(written, device, mount, result, None)

    def _report(self, written: Written, device: pb.Device, mount: pb.Mount, found: _Found,
                content: Identification | None, *, revises: str = "") -> None:
        """Emit the file.copy on the stronger evidence: content, or hash and lineage; a write
        judged without evidence waits for a second look (`revises`: the judgement this one,
        made on a later fact, revises)."""
        lineage = found.provenance
        sources: list[str] = []
        tags: list[str] = []
        by_content = False
        if content is not None and content.found:
            sources, tags, original = self.originals(content.sources, content.tags)
            # found in derived files only (an encrypted export staged in /tmp): their
            # provenance is the evidence, not the exact match with them
            by_content = original and (lineage is None or content.confidence >= lineage.confidence)
            if not original and lineage is None:
                lineage = self._derived_provenance(content.sources)
        elif content is not None and lineage is not None and _listed_untagged(content, lineage):
            lineage = provenance.only_guessed(lineage)
        evidence = by_content or (lineage is not None and lineage.evidence)
        if not by_content and lineage is None:
            if written.late is None:
                self.second_look.wait(written, device, mount, found.first, found.key)
            return
        copy = self._event("file.copy", written, device, mount)
        if revises:
            copy.exfilguard.copy.revises = revises
            copy.event.reason = (f"judged again: a fact tying it to tagged data arrived after its first "
                                 f"judgement (event {revises})")
        methods = list(found.methods)
        if by_content:
            assert content is not None
            copy.tags.extend(tags)
            copy.exfilguard.source.path = fs_text(sources[0])
            copy.exfilguard.source.tags.extend(tags)
            if "fingerprint" not in methods:
                methods.insert(0, "fingerprint")
            copy.exfilguard.copy.files_read = max(found.files_read, len(sources))
            content.fill(copy)
            del copy.exfilguard.copy.sources[:]
            copy.exfilguard.copy.sources.extend(fs_texts(sources[: provenance.MAX_SOURCES]))
            if lineage is not None:
                copy.exfilguard.copy.bytes_read = lineage.bytes_read
                copy.exfilguard.copy.bytes_written = lineage.bytes_written
        else:
            assert lineage is not None
            copy.tags.extend(lineage.tags)
            copy.exfilguard.source.path = fs_text(lineage.source)
            copy.exfilguard.source.tags.extend(lineage.sources[0].tags if lineage.sources else lineage.tags)
            if found.sha256 and lineage.identified_by == provenance.EXACT:
                copy.exfilguard.source.sha256 = found.sha256
            copy.exfilguard.copy.files_read = found.files_read
            provenance.describe(copy.exfilguard.copy, lineage)
            if content is not None:  # what opaque output looks like (entropy, format)
                copy.exfilguard.content.entropy = content.entropy
                copy.exfilguard.content.format = content.format
                copy.exfilguard.content.refused = content.refused
                if content.format:
                    copy.exfilguard.copy.members_total = content.members_total
        if found.sha256:
            copy.file.hash.sha256 = found.sha256
        copy.exfilguard.copy.method.extend(methods)
        self._emit(copy)
        if not evidence and written.late is None:
            self.second_look.wait(written, device, mount, copy.event.id, found.key)

    def _rejudge(self, waiting: Waiting, fd: int) -> bool:
        """A waiting write looked at again (second look's thread): equal to a derived (or a
        tagged) file, or one part of a derived one, with evidence? Then its file.copy on it."""
        size = waiting.key[2]
        match = self._equal(fd, size, waiting.written)
        found: Provenance | None = None
        sha = ""
        if match is not None:
            sha = match[1]
            found = self.index.provenance(match[0])
            if found is None:
                make = provenance.exact if sha else provenance.sampled
                found = make(match[0], self.index.source_tags(match[0]), size)
        if (found is None or not found.evidence) and (part := self.slices.find(fd, size)) is not None:
            found, sha = self.index.provenance(part.path), ""
        if found is None or not found.evidence:
            return False
        log.info("%s judged again: tied to %s (%s) after its first judgement", waiting.written.path,
                 found.source, found.identified_by)
        self._report(waiting.written, waiting.device, waiting.mount,
                     _Found(found, ["fingerprint"], sha, found.files), None, revises=waiting.first)
        return True

    def originals(self, paths: list[str], tags: list[str]) -> tuple[list[str], list[str], bool]:
        """Content found in derived files (an export staged in /tmp) named by the tagged files
        they came from: (source paths, tags, whether any was found in a tagged file itself)."""
        out: list[str] = []
        all_tags = list(tags)
        original = False
        for path in paths:
            derived = self.index.provenance(path)
            if derived is None:
                original = True
                out.append(path)
                continue
            out.extend(s.path for s in derived.sources)
            all_tags.extend(derived.tags)
        return list(dict.fromkeys(out)) or paths, list(dict.fromkeys(all_tags)), original

    def _derived_provenance(self, paths: list[str]) -> Provenance | None:
        """The strongest provenance of the derived files content was found in."""
        found = [p for p in (self.index.provenance(path) for path in paths) if p is not None]
        return max(found, key=lambda p: p.confidence) if found else None

    def _remember(self, serial: str, path: str, fd: int) -> None:
        try:
            st = os.fstat(fd)
        except OSError:
            return
        with self._reported_lock:
            self._reported[(serial, path)] = (st.st_size, st.st_mtime_ns)
            self._reported.move_to_end((serial, path))
            while len(self._reported) > REMEMBERED_WRITES:
                self._reported.popitem(last=False)

    def _reported_already(self, serial: str, path: str, st: os.stat_result) -> bool:
        with self._reported_lock:
            return self._reported.get((serial, path)) == (st.st_size, st.st_mtime_ns)

    def catch_up(self, mount: RemovableMount, watched_at: float, limit: int = 10_000) -> int:
        """Report files written on a new mount before its watch was in place (at `watched_at`,
        wall clock): changed (ctime) between just before the mount was seen and then; later
        changes are the watch's. Returns how many. Runs in its own thread."""
        if not mount.seen_at:
            return 0  # present at agent start: what happened before is the agent's own gap
        since = max(mount.seen_at - CATCH_UP_MARGIN_SECONDS, self.started_at)
        # file times come from a coarse kernel clock: stay clear of the watch's side
        until = watched_at - _COARSE_CLOCK_SECONDS
        return self.examine_changed(mount.point, since, until, limit=limit, serial=mount.device.serial)

    def examine_changed(self, point: str, since: float, until: float, *, late: bool = False,
                        limit: int = 10_000, serial: str | None = None) -> int:
        """Report the files under `point` changed (ctime) in [since, until) like live writes
        (`late`: reported as written while the agent was not running). Returns how many;
        stops after `limit` directory entries. With the device's `serial`, files reported from it
        already, unchanged since, are left out."""
        found = 0
        stack, seen, too_deep = [point], 0, 0
        while stack and seen < limit:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        seen += 1
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if since <= st.st_ctime < until and not (
                                    serial is not None and self._reported_already(serial, entry.path, st)):
                                found += 1
                                self.note_write(Written(path=entry.path, size=st.st_size,
                                                        late=(since, until) if late else None))
            except OSError as exc:
                # unmounted meanwhile, or unreadable; or nested deeper than PATH_MAX (made one cd
                # at a time), which the kernel will not open by path
                too_deep += exc.errno == errno.ENAMETOOLONG
                continue
        if stack or too_deep:
            # what is not examined may hold a copy: said in an agent.gap, not only in the log
            why = " and ".join([*([f"stopped after {limit} entries"] if stack else []),
                                *([f"{too_deep} directories deeper than PATH_MAX"] if too_deep else [])])
            log.warning("%s: %s; files changed there are not examined", point, why)
            self._emit(sensor_gap("unexamined_files", 0, f"files changed on {fs_text(point)} while it was "
                                                         f"not watched were not all examined: {why}"))
        return found

    @staticmethod
    def _event(action: str, written: Written, device: pb.Device, mount: pb.Mount) -> pb.Event:
        event = new_event(action, file=file_fields(written.path, written.size))
        event.device.CopyFrom(device)
        event.exfilguard.mount.CopyFrom(mount)
        describe_writer(event, written)
        if written.late is not None:
            event.exfilguard.late = True
            event.exfilguard.late_window.start.CopyFrom(_stamp(written.late[0]))
            event.exfilguard.late_window.end.CopyFrom(_stamp(written.late[1]))
        return event


def _listed_untagged(content: Identification, lineage: Provenance) -> bool:
    """Byte lineage, and an archive read whole (no member refused, encrypted or cut short)
    none of whose members is tagged data: the archive's own listing outweighs the timing of
    the reads (a tar of holiday photos made just after a tagged file was read)."""
    archive = content.format in ("tar", "zip", "7z") or content.format.startswith("tar.")
    return (lineage.identified_by == provenance.LINEAGE_BYTES and archive and content.members_total > 0
            and not content.refused and not content.read_error)


def _stamp(seconds: float) -> Timestamp:
    """A wall-clock time as a protobuf Timestamp (microseconds, as every event time)."""
    ts = Timestamp()
    ts.FromMicroseconds(int(seconds * 1_000_000))
    return ts


def _key(fd: int | None) -> tuple[int, int, int, int] | None:
    """(st_dev, st_ino, st_size, st_mtime_ns) of a written file as judged; None if unknown."""
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _dup(fd: int | None) -> int | None:
    """A descriptor of our own on the written file, which the examiner reads later."""
    if fd is None:
        return None
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
    except OSError:
        return None


def written_text(fd: int) -> bool:
    """Whether a written file begins as text (what was read may come out larger as text), in
    UTF-8 or a wide form: `iconv -t UTF-16` of a CSV is twice the CSV, UTF-32 four times."""
    try:
        head = os.pread(fd, 8192, 0)
    except OSError:
        return False
    return looks_like_text(head) or bool(wide_text(head))
