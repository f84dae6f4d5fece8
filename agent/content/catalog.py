"""ContentCatalog: chunk and text fingerprints of every tagged file, kept in step with the index.

The FingerprintIndex knows every tagged file by size and hash (exact copies). The catalog
reads each tagged file once more, in its own low-priority thread, and keeps its content-
defined chunk keys (agent/content/chunks.py) and, for text, a sample of its line and field
features (textsim.py) in two compact `FeatureTable`s. It follows the index's version: a
new or changed file is fingerprinted again, a removed one's id retired and swept later.

Memory is bounded: at most `max_chunks` chunk entries (8 bytes each, tables kept at most
half full); past that a file is left without chunk fingerprints, logged, and counted
through `on_loss` (the agent reports it as an `agent.gap`).

With a `saved_path` (the agent's state directory), the catalog is saved (saved.py) when it
goes idle after a change, at most once every `SAVE_SECONDS`, and at stop; at the next start it
is loaded and checked, and only tagged files that changed meanwhile (size or mtime) are read
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.background import Background
from agent.content import saved
from agent.content.chunks import MAX_ID, ChunkStream, FeatureTable
from agent.content.textsim import MIN_SAMPLE, TextFeatures, TextSample, looks_like_text, too_few_features
from agent.sensors.digests import sample_digest
from agent.sensors.fingerprints import FingerprintIndex

log = logging.getLogger(__name__)

_READ = 1 << 20
TEXT_BYTES = 16 << 20  # text features come from at most this much of a file's start
SAVE_SECONDS = 60.0    # the saved catalog is rewritten at most this often (and at stop)
QUIET_SECONDS = 0.25   # tagged files are fingerprinted once the index has been still this long...
DEFER_SECONDS = 2.0    # ...or the oldest has waited this long
LossReport = Callable[[str, int], None]  # (reason, files affected)


@dataclass(slots=True)
class Source:
    """One tagged file as the catalog fingerprinted it."""

    path: str
    size: int
    mtime: int
    tags: tuple[str, ...]
    chunks: int = -1          # distinct chunks recorded; -1 until fingerprinted
    text: int = 0             # sampled text features (0: not text, or too few)
    sha256: str = ""
    sample: bytes = b""       # the index's sampled hash (fingerprints.sample_digest)


class ContentCatalog:
    """Chunk and text fingerprints of tagged files; a sensor (`content`) with start/stop."""

    name = "content"

    def __init__(self, index: FingerprintIndex, *, max_chunks: int = 4_000_000,
                 max_file_bytes: int = 4 << 30, on_loss: LossReport | None = None,
                 poll_seconds: float = 0.5, saved_path: str = "") -> None:
        self.index = index
        self.saved_path = saved_path
        self.loaded = 0            # sources taken from the saved catalog at start, unchanged since
        self._changes = 0          # fingerprints added or retired: the saved catalog is behind
        self._saved_changes = 0
        self._saved_at = 0.0
        self.max_chunks = max_chunks
        self.max_file_bytes = max_file_bytes
        self._on_loss = on_loss
        self._poll = poll_seconds
        self.chunks = FeatureTable(1 << 16)
        self.text = FeatureTable(1 << 12)
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._sources: dict[int, Source] = {}
        self._pending: dict[str, None] = {}   # paths to fingerprint, oldest first
        self._reading = ""                     # the path being fingerprinted now, popped from _pending
        self._retired = 0
        self._next_id = 1
        self._synced_version = -1
        self._settled_at = -1e9
        self._changed_at = -1e9     # when sync last took a change of the index
        self._pending_since = 0.0   # when _pending last became non-empty
        # monotonic time the event threads last had work (set by the wiring): a burst of tagged
        # reads is waited out too
        self.activity: Callable[[], float] = lambda: 0.0
        self._full_logged = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        index.wake_on_change(self._wake)  # the thread sleeps until the index changes
        self._background = Background("content", self._run)

    # ---------------------------------------------------------------- life

    def start(self) -> None:
        """Fingerprint the tagged files in a background thread, then follow changes."""
        self._background.start()

    def stop(self) -> None:
        """Stop fingerprinting (and save the catalog); idempotent."""
        self._stop.set()
        self._wake.set()
        # a thread still busy after the wait may be changing the tables: not saved then
        if self._background.running and self._background.join():
            self._save(force=True)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every tagged file known now is fingerprinted; False on timeout."""
        self._idle.clear()
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic()))) and self.ready():
                return True
            self._wake.set()
        return self.ready()

    def ready(self) -> bool:
        """Nothing left to fingerprint (as of the index version last seen), nor being read:
        the file last taken from the queue counts until its fingerprints are in the tables
        (wait_ready may see an idle flag left from an earlier pass)."""
        with self._lock:
            return not self._pending and not self._reading and self._synced_version == self.index.version

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # background work: the user's programs go first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        self._load()
        while not self._stop.is_set():
            try:
                self.sync()
                while not self._stop.is_set() and self._burst_over() and self._fingerprint_next():
                    if self.index.version != self._synced_version:
                        self.sync()
                self._save(force=False)
            except Exception:
                log.exception("content catalog: fingerprinting failed")
            self._idle.set()
            self._wake.wait(self._rest())
            self._wake.clear()

    def _rest(self) -> float | None:
        """How long the thread sleeps once nothing is left to read: until the index changes (it
        sets `_wake`), not on a timer (two wake-ups a second: 9 ms of CPU in 30 s of idle, perf),
        unless files are still queued (a failure: tried again soon) or a save is owed."""
        if self._pending:
            return self._poll
        if self.saved_path and self._changes != self._saved_changes:
            return max(self._poll, self._saved_at + SAVE_SECONDS - time.monotonic())
        return None

    def _burst_over(self) -> bool:
        """Wait while tagged files are still being written in a burst (the index changed, or
        the event threads had work, in the last `QUIET_SECONDS`), for at most `DEFER_SECONDS`
        since the oldest file queued: read while the event threads are busy, each file cost
        twice the CPU (the threads trade the interpreter lock at every system call); a burst's
        files are read after it, in one go."""
        while not self._stop.is_set():
            now = time.monotonic()
            busy = max(self._changed_at, self.activity())
            wait = min(busy + QUIET_SECONDS, self._pending_since + DEFER_SECONDS) - now
            if wait <= 0 or not self._pending:
                return True
            self._stop.wait(min(wait, QUIET_SECONDS))
            self._take()  # not settle(): a stat of every file of the burst at every look
        return False

    # -------------------------------------------------------------- updates

    def sync(self) -> None:
        """Take the index's files: queue new and changed ones, retire removed ones."""
        if self.index.version == self._synced_version:
            return
        now = time.monotonic()
        if now - self._settled_at >= self._poll:  # a stat of every file written in the last
            self._settled_at = now                # seconds: not once per file of a burst
            self.index.settle()
        self._take()

    def _take(self) -> None:
        now = time.monotonic()
        version, changes = self.index.take_changes()
        whole = changes is None or self._synced_version < 0
        if changes is None or whole:
            current = {path: (size, mtime, tags) for path, size, mtime, tags in self.index.snapshot()}
            with self._lock:
                for path in [p for p in self._ids if p not in current]:
                    self._retire(path)
                for path in [p for p in self._pending if p not in current]:
                    del self._pending[path]
            changes = list(current.items())
        with self._lock:
            if whole:  # the tagged files at start (or after lost events): read them at once
                self._pending_since = -DEFER_SECONDS
            elif changes:
                self._changed_at = now
                if not self._pending:
                    self._pending_since = now
            for path, entry in changes:
                if entry is None:
                    self._retire(path)
                    self._pending.pop(path, None)
                    continue
                size, mtime, tags = entry
                known = self._sources.get(self._ids.get(path, 0))
                if known is None or known.size != size or known.mtime != mtime:
                    if known is not None:
                        self._retire(path)
                    self._pending[path] = None
                elif known.tags != tags:
                    known.tags = tags
                    self._changes += 1
            self._synced_version = version
            if self._retired > max(4096, len(self.chunks) // 2):
                self._compact()

    def _retire(self, path: str) -> None:
        file_id = self._ids.pop(path, None)
        if file_id is not None:
            self._changes += 1
            source = self._sources.pop(file_id, None)
            self._retired += max(0, source.chunks if source else 0)

    def _compact(self) -> None:
        live = self._sources.__contains__
        self.chunks.compact(live)
        self.text.compact(live)
        self._retired = 0
        self._full_logged = len(self.chunks) >= self.max_chunks

    def _new_id(self) -> int:
        if self._next_id >= MAX_ID:  # ids wrapped: sweep the dead ones, then reuse free ids
            self._compact()
            self._next_id = 1
        while self._next_id in self._sources:
            self._next_id += 1
        file_id = self._next_id
        self._next_id += 1
        return file_id

    def _fingerprint_next(self) -> bool:
        with self._lock:
            if not self._pending:
                return False
            path = next(iter(self._pending))
            del self._pending[path]
            self._reading = path
        try:
            self._fingerprint(path)
        finally:
            with self._lock:
                self._reading = ""
        return True

    def _fingerprint(self, path: str) -> None:
        tags = self.index.tags_of(path)
        if tags:  # opened, then looked at (fstat): one look-up of the path per file, not two
            self.index.read_own(path, lambda fd: self._read_source(fd, path, tags))

    def _read_source(self, fd: int, path: str, tags: tuple[str, ...]) -> None:
        """Fingerprint one open tagged file; one unreadable, or changed while read, is left
        out (its next index change queues it again)."""
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or before.st_size <= 0 or before.st_size > self.max_file_bytes:
            return
        with self._lock:
            full = len(self.chunks) >= self.max_chunks
        if full:
            self._lost("content_index_full", path)
            return
        source = Source(path=path, size=before.st_size, mtime=before.st_mtime_ns, tags=tags)
        with self._lock:
            file_id = self._new_id()
            self._sources[file_id] = source  # live while it is read: lookups may hit it early
            self._ids[path] = file_id
        try:
            done = self._fill(fd, file_id, source, before)
        except OSError:
            done = False
        if not done:
            with self._lock:
                if self._ids.get(path) == file_id:
                    self._retire(path)

    def _fill(self, fd: int, file_id: int, source: Source, before: os.stat_result) -> bool:
        """Read the file's chunk and text fingerprints and hashes; False if it changed meanwhile."""
        seen: set[int] = set()
        table = self.chunks
        budget = self.max_chunks

        def chunk(key: int, _length: int) -> None:
            if key not in seen and len(table) < budget:
                seen.add(key)
                table.add(key, file_id)

        chunker = ChunkStream(chunk)
        sha = hashlib.sha256()
        sample: TextSample | None = None
        text: TextFeatures | None = None
        head = b""
        offset = 0
        while offset < source.size:
            # no more than the file holds: a read asks the kernel, and Python allocates, the
            # whole request (1 MiB for a 1 KiB file cost 15 us, more than its fingerprinting)
            data = os.pread(fd, min(_READ, source.size - offset), offset)
            if not data:
                break
            if offset == 0:
                head = data
                # a small file without the lines or fields for a sample of its own is left out
                small = len(data) >= source.size and too_few_features(data)
                if not small and looks_like_text(data[:8192]):
                    sample = TextSample()
                    text = TextFeatures(sample.add)
            chunker.update(data)
            sha.update(data)
            if text is not None and offset < TEXT_BYTES:
                text.update(data)
            offset += len(data)
        chunker.finish()
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, offset) != (before.st_size, before.st_mtime_ns, source.size):
            return False  # changed while read
        if text is not None and sample is not None:
            text.finish()
            if len(sample.keys) >= MIN_SAMPLE:
                for key in sample.keys:
                    self.text.add(key, file_id)
                source.text = len(sample.keys)
        source.sample = sample_digest(fd, source.size, head)
        source.sha256 = sha.hexdigest()
        source.chunks = len(seen)
        with self._lock:
            self._changes += 1
        # the exact-copy check then needs no second open of the source (3 blocks, just read)
        self.index.remember_digest(source.path, source.mtime, source.size, source.sha256, source.sample)
        if len(table) >= budget:
            self._lost("content_index_full", source.path)
        return True

    # ---------------------------------------------------------- saved catalog

    def _load(self) -> None:
        """Take the saved catalog (saved.py); sync() then retires what changed since."""
        if not self.saved_path:
            return
        try:
            found = saved.load(self.saved_path)
            if found is not None and len(found.chunks) > self.max_chunks:
                raise saved.SavedCatalogError(self.saved_path, f"holds more than {self.max_chunks} chunks")
        except saved.SavedCatalogError as exc:
            log.warning("%s: the tagged files are fingerprinted again", exc)
            saved.remove(self.saved_path)
            return
        if found is None:
            return
        current = {path: (size, mtime) for path, size, mtime, _tags in self.index.snapshot()}
        with self._lock:
            self.chunks, self.text = found.chunks, found.text
            for s in found.sources:
                self._sources[s.file_id] = Source(s.path, s.size, s.mtime, s.tags, s.chunks, s.text,
                                                  s.sha256, s.sample)
                self._ids[s.path] = s.file_id
            self._next_id = max(self._sources, default=0) + 1
            self._saved_changes = self._changes
        unchanged = [s for s in found.sources if current.get(s.path) == (s.size, s.mtime)]
        for s in unchanged:
            self.index.remember_digest(s.path, s.mtime, s.size, s.sha256, s.sample)
        self.loaded = len(unchanged)
        log.info("content catalog: %d of %d saved tagged files unchanged since the last run; the rest "
                 "are fingerprinted again", self.loaded, len(found.sources))

    def _save(self, *, force: bool) -> None:
        """Save the catalog if it changed (at most every SAVE_SECONDS unless `force`)."""
        now = time.monotonic()
        if not self.saved_path or self._changes == self._saved_changes or (
                not force and now - self._saved_at < SAVE_SECONDS):
            return
        with self._lock:
            changes = self._changes
            sources = [saved.SavedSource(i, s.path, s.size, s.mtime, s.tags, s.chunks, s.text, s.sha256,
                                         s.sample)
                       for i, s in self._sources.items() if s.chunks >= 0 and s.sha256 and s.sample]
        try:
            saved.save(self.saved_path, saved.SavedCatalog(sources, self.chunks, self.text))
        except OSError as exc:
            log.warning("content catalog not saved to %s: %s", self.saved_path, exc.strerror)
            return
        self._saved_changes, self._saved_at = changes, now

    def _lost(self, reason: str, path: str) -> None:
        # once until the catalog has room again (a sweep): not one report per file
        if self._full_logged:
            return
        self._full_logged = True
        log.warning("content catalog full (%d chunk fingerprints): %s and later tagged files "
                    "are matched by exact hash only", self.max_chunks, path)
        if self._on_loss is not None:
            self._on_loss(reason, 1)

    # -------------------------------------------------------------- queries

    def source(self, file_id: int) -> Source | None:
        """The tagged file behind an id, if it is still current."""
        with self._lock:
            return self._sources.get(file_id)

    def chunk_ids(self, key: int) -> list[int]:
        """Ids of current tagged files holding this chunk."""
        sources = self._sources
        return [i for i in self.chunks.ids(key) if i in sources]

    def text_ids(self, key: int) -> list[int]:
        """Ids of current tagged text files whose sample holds this feature."""
        sources = self._sources
        return [i for i in self.text.ids(key) if i in sources]

    def has_text(self) -> bool:
        """Whether any tagged file has a text sample (else text features are not computed)."""
        return len(self.text) > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._sources)

    def paths(self, ids: Iterable[int]) -> list[str]:
        """Paths of these ids (current ones only)."""
        with self._lock:
            return [self._sources[i].path for i in ids if i in self._sources]
