"""FingerprintIndex: every tagged file by size, with sampled and full hashes computed on demand.

Keyed by size first (a stat walk, cheap for 100,000 files); a sampled hash (head,
middle and tail blocks) is computed only for tagged files whose size matches a written
file, and a full SHA-256 confirms a match. Files larger than `max_hash_bytes` are not read
whole: for them equal size and sampled hash are the match (a `sampled` identification).
The index also keeps per-tag totals, which is what the tag inventory reports.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH116

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, TypeVar

from agent.sensors.derivedinodes import DerivedInodes
from agent.sensors.digests import full_digest, sample_digest
from agent.sensors.formers import FormerVersions
from agent.sensors.held import HeldFiles, own_read
from agent.sensors.tags import TagMap
from agent.sensors.treewalk import regular_files

if TYPE_CHECKING:
    from agent.sensors.provenance import Provenance

_T = TypeVar("_T")
# A file changed less than this long ago may still be being written: its entry is looked at
# again (see `settle`) until it has been quiet this long or its close-after-write is seen.
_SETTLE_NS = 2_000_000_000
_MAX_UNSETTLED = 4096
_MAX_CHANGED = 65_536
MAX_DERIVED = 10_000  # files derived from tagged data remembered outside the tagged trees


class FingerprintIndex:
    """Tagged files (path -> size, mtime, tags) with lazily computed fingerprints."""

    def __init__(self, tags: TagMap, max_hash_bytes: int = 4 << 30) -> None:
        self.tags = tags
        self.max_hash_bytes = max_hash_bytes
        self._lock = threading.RLock()
        self._files: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        # size -> paths of that size (a dict as an ordered set: a change of one of 10,000 files of
        # one size costs a pop, not a scan of a list); each path maps to itself, so that
        # `stored_path` can hand out the index's own string
        self._by_size: dict[int, dict[str, str]] = {}
        self._samples: dict[str, tuple[int, bytes]] = {}
        # path -> (mtime_ns, SHA-256, size) of the indexed file as it is now: an entry goes
        # whenever its file's index entry does (_delete), so it is never stale
        self._full: dict[str, tuple[int, str, int]] = {}
        # SHA-256 -> the path in _full with it, a set only when more have it (a set for each was
        # 4.6 MiB of 20,000 tagged files)
        self._by_digest: dict[str, str | set[str]] = {}
        self._hashed: dict[int, int] = {}          # size -> paths of that size in _full
        # what tagged files held before their last change or deletion, for a while: a copy
        # handled after its source was edited still matches (formers.py)
        self.formers = FormerVersions()
        self._sample_maps: dict[int, dict[bytes, list[str]]] = {}
        self._totals: dict[str, list[int]] = {}
        self._interned: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.version = 0  # bumped on every change: the inventory reports when it moves
        # set at every change: the threads that follow the index sleep until then, not on a timer
        self._wakes: list[threading.Event] = []
        # Derived files (written from tagged data outside the tagged trees): matched like
        # tagged files, so copying one to a stick is a copy of tagged data, but not counted
        # in the inventory.
        self._derived: dict[str, tuple[str, ...]] = {}
        self._provenance: dict[str, Provenance] = {}
        self.derived_inodes = DerivedInodes()  # moved or linked since: known by the inode
        self.derived_dropped = 0  # derived files forgotten at the MAX_DERIVED bound
        self.on_derived: list[Callable[[str], None]] = []  # watch_derived
        # Paths we are hashing now: inotify cannot tell our own reads from a user's. Oldest
        # first (a renewed entry moves to the end), so expired ones are dropped from the front.
        self._own_reads: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        # False when fanotify reports the accesses (it names the agent's own pid, and inotify
        # then watches structure only): nothing asks `read_by_us`, nothing is recorded
        self.own_reads_asked = True
        # descriptors fanotify handed over with files just written: read through them, the
        # agent's own reads are not reported back to it (held.py)
        self.held = HeldFiles()
        # Files indexed from a stat that may have run while they were still being written (a
        # create event, a walk) and whose close-after-write may never reach `update`: written
        # before their directory's fanotify mark landed, or by the agent's own process, which
        # fanotify skips. `settle()` (on every match and inventory check) stats them again.
        self._unsettled: dict[str, None] = {}
        # paths whose entry changed since the content catalog last took them (`take_changes`),
        # so a burst of new tagged files costs it one look each, not a snapshot of the index
        # per file; None: more than `_MAX_CHANGED`, or a rebuild (take a snapshot)
        self._changed: dict[str, None] | None = None

    # ------------------------------------------------------------- building

    def rebuild(self) -> int:
        """Walk every tagged root again (start, rescan after a lost event); returns files indexed."""
        roots = self.tags.refresh()
        fresh: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        version = self.version
        for root in sorted(roots):
            for path, size, mtime in regular_files(root):
                if path not in fresh:
                    fresh[path] = (size, mtime, self._intern(tuple(self.tags.tags_for(path))))
        with self._lock:
            derived = dict(self._derived)
        for path, tags in derived.items():
            try:
                st = os.stat(path)
            except OSError:
                continue
            fresh[path] = (st.st_size, st.st_mtime_ns, tags)
        with self._lock:
            # Events handled while we walked changed the old index: where the two disagree,
            # look again, so a file created (or deleted) mid-walk is not lost to the swap. With
            # no event handled meanwhile, what the walk found alone was there as it looked (the
            # first walk: every file; a second stat of each made 20,000 tagged files' start slower)
            moved = self.version != version
            for path in set(self._files).symmetric_difference(fresh):
                if not moved and path in fresh:
                    continue
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    fresh.pop(path, None)
                    continue
                tags = self._derived.get(path) or self._intern(tuple(self.tags.tags_for(path)))
                if stat.S_ISREG(st.st_mode) and tags:
                    fresh[path] = (st.st_size, st.st_mtime_ns, tags)
            self._files = {}
            self._changed = None
            self._by_size = {}
            self._sample_maps = {}
            horizon = time.time_ns() - _SETTLE_NS
            self._unsettled = {}
            for path, entry in fresh.items():
                if entry[1] >= horizon and path not in self._derived:
                    self._unsettle(path)
            # every configured tag, with 0 while its paths do not exist: the collector sees it
            self._totals = {tag: [0, 0] for tag in self.tags.all_tags()}
            for path, entry in fresh.items():
                self._insert(path, entry)
            self._samples = {p: v for p, v in self._samples.items() if p in self._files}
            for path in [p for p, v in self._full.items() if self._files.get(p, (0, -1))[1] != v[0]]:
                self._drop_full(path)
            self._bump()
            return len(self._files)

    def _intern(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        # 100,000 files under one root share one tags tuple, not 100,000 copies.
        return self._interned.setdefault(tags, tags)

    def _insert(self, path: str, entry: tuple[int, int, tuple[str, ...]]) -> None:
        self._sample_maps.pop(entry[0], None)
        self._files[path] = entry
        self._note_change(path)
        self._by_size.setdefault(entry[0], {})[path] = path
        if path in self._derived:
            return
        for tag in entry[2]:
            totals = self._totals.setdefault(tag, [0, 0])
            totals[0] += 1
            totals[1] += entry[0]

    def _delete(self, path: str) -> None:
        self._unsettled.pop(path, None)
        entry = self._files.pop(path, None)
        if entry is None:
            return
        self._note_change(path)
        self._sample_maps.pop(entry[0], None)
        same = self._by_size.get(entry[0])
        if same is not None:
            same.pop(path, None)
            if not same:
                del self._by_size[entry[0]]
        self._samples.pop(path, None)
        full = self._full.get(path)
        self._drop_full(path)
        if path in self._derived:
            self.derived_inodes.forget(path)
            return
        if full is not None:
            self.formers.add(path, entry[0], full[1], entry[2])
        for tag in entry[2]:
            totals = self._totals.get(tag)
            if totals is not None:
                totals[0] -= 1
                totals[1] -= entry[0]

    def wake_on_change(self, wake: threading.Event) -> None:
        """Set `wake` at every change of the index from now on."""
        self._wakes.append(wake)

    def _bump(self) -> None:
        # under the lock
        self.version += 1
        for wake in self._wakes:
            wake.set()

    @property
    def unsettled(self) -> bool:
        """Whether files indexed mid-write wait for `settle` to look at them again."""
        return bool(self._unsettled)

    def _note_change(self, path: str) -> None:
        # under the lock
        changed = self._changed
        if changed is not None:
            changed[path] = None
            if len(changed) > _MAX_CHANGED:
                self._changed = None

    def take_changes(self) -> tuple[int, list[tuple[str, tuple[int, int, tuple[str, ...]] | None]] | None]:
        """For the content catalog (its only reader): the files whose entry changed since the
        last call, each with its entry now ((size, mtime_ns, tags), None when gone), and the
        version they bring the index to. None for the list when the feed cannot say (the
        first call, a rebuild, more than `_MAX_CHANGED` changes): take a `snapshot`."""
        with self._lock:
            changed, self._changed = self._changed, {}
            if changed is None:
                return self.version, None
            return self.version, [(path, self._files.get(path)) for path in changed]

    def _keep_full(self, path: str, mtime_ns: int, sha256: str) -> None:
        # under the lock
        self._drop_full(path)
        size = self._files[path][0]
        self._full[path] = (mtime_ns, sha256, size)
        same = self._by_digest.setdefault(sha256, path)
        if isinstance(same, set):
            same.add(path)
        elif same != path:
            self._by_digest[sha256] = {same, path}
        self._hashed[size] = self._hashed.get(size, 0) + 1

    def _drop_full(self, path: str) -> None:
        # under the lock
        old = self._full.pop(path, None)
        if old is not None:
            same = self._by_digest.get(old[1])
            if isinstance(same, set):
                same.discard(path)
                if len(same) == 1:
                    self._by_digest[old[1]] = same.pop()
            elif same == path:
                del self._by_digest[old[1]]
            left = self._hashed.get(old[2], 0) - 1
            if left > 0:
                self._hashed[old[2]] = left
            else:
                self._hashed.pop(old[2], None)

    # ------------------------------------------------------------- updates

    def update(self, path: str, *, written: bool = True, fd: int | None = None,
               looked: os.stat_result | None = None) -> None:
        """A tagged path was written (closed after a write), or created or moved
        (`written=False`: it may still be being written): re-stat it (a directory is walked).
        `fd`: open on the written file (fanotify's), held for the agent's own read of it.
        `looked`: the caller's look at it just now (a create's lstat; with `fd`, the closed file's)."""
        with self._lock:
            # stat and store as one step: of two threads updating one path (a create event
            # and a close-after-write), the later stat is the one kept
            old = self._files.get(path)
            if looked is not None and (old is None or old[1] < looked.st_mtime_ns + (fd is not None)):
                st = looked  # nothing newer stored (a close's look wins a tie): the caller's is later
            else:
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    self.remove(path)
                    return
            if stat.S_ISREG(st.st_mode):
                self._set(path, st.st_size, st.st_mtime_ns, settled=written)
                if fd is not None and path in self._files:
                    self.held.hold(path, fd)
                return
        if stat.S_ISDIR(st.st_mode):
            for sub, size, mtime in regular_files(path):
                self._set(sub, size, mtime, settled=False)

    def add_tree(self, root: str) -> int:
        """A tagged root appeared (or its tags changed): index every file below it; returns
        how many files it holds."""
        count = 0
        for path, size, mtime in regular_files(root):
            self._set(path, size, mtime, settled=False)
            count += 1
        return count

    def add_derived(self, path: str, provenance: Provenance, fd: int | None = None) -> None:
        """A file written from tagged data outside the tagged trees (an archive in /tmp): matched
        like tagged files, with where its data came from; not in the inventory. `fd` (its writer's
        close): indexed and sampled even when its name is gone (moved on, the agent behind)."""
        try:
            st = os.fstat(fd) if fd is not None else os.stat(path)
        except OSError:
            return
        with self._lock:
            self._delete(path)
            self._derived[path] = self._intern(tuple(provenance.tags))
            self._provenance[path] = provenance
            self.derived_inodes.note(path, st)
            while len(self._derived) > MAX_DERIVED:  # bounded: forget the oldest derived file
                oldest = next(iter(self._derived))
                self._delete(oldest)
                del self._derived[oldest]
                self._provenance.pop(oldest, None)
                self.derived_dropped += 1
            self._insert(path, (st.st_size, st.st_mtime_ns, self._derived[path]))
            self._bump()
            for told in self.on_derived:  # under the lock
                told(path)
        with contextlib.suppress(OSError):  # sampled while there: a copy made after it moved on matches
            digest = sample_digest(fd, st.st_size) if fd is not None else self._sample_of(path, st.st_size)
            with self._lock:
                if digest is not None and self._files.get(path, (0, -1))[1] == st.st_mtime_ns:
                    self._samples[path] = (st.st_mtime_ns, digest)

    def watch_derived(self, told: Callable[[str], None]) -> list[str]:
        """Call `told(path)` as a derived file is added; returns those there are now."""
        with self._lock:
            self.on_derived.append(told)
            return list(self._derived)

    def is_derived(self, path: str) -> bool:
        """Whether `path` is a derived file (lock-free: the fanotify reader asks per event)."""
        return path in self._derived

    def provenance(self, path: str) -> Provenance | None:
        """Where a derived file's data came from (None: a tagged file, or not indexed)."""
        with self._lock:
            return self._provenance.get(path)

    def _set(self, path: str, size: int, mtime: int, *, settled: bool) -> None:
        tags = self.tags.tags_of(path)
        if not tags:
            return
        with self._lock:
            old = self._files.get(path)
            if old is None or old[0] != size or old[1] != mtime or old[2] != tags:
                self._delete(path)
                self._insert(path, (size, mtime, self._intern(tags)))
                self._bump()
            if settled or mtime < time.time_ns() - _SETTLE_NS:
                self._unsettled.pop(path, None)
            else:
                self._unsettle(path)

    def _unsettle(self, path: str) -> None:
        self._unsettled[path] = None
        while len(self._unsettled) > _MAX_UNSETTLED:  # bounded: the oldest is taken as it is
            del self._unsettled[next(iter(self._unsettled))]

    def settle(self) -> None:
        """Stat again the files indexed while they may still have been written, and take
        a changed size or mtime (a close-after-write we never saw must not leave a stale
        entry, which no copy would match); each is settled once quiet for `_SETTLE_NS`."""
        if not self._unsettled:  # the usual case: no lock, no stat
            return
        with self._lock:
            paths = list(self._unsettled)
        for path in paths:
            with self._lock:
                if path not in self._unsettled:
                    continue  # settled (or removed) meanwhile
                del self._unsettled[path]
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue  # gone: its delete (or rename) event updates the index
                if stat.S_ISREG(st.st_mode) and path in self._files:
                    self._set(path, st.st_size, st.st_mtime_ns, settled=False)

    def remove(self, path: str) -> None:
        """A tagged (or derived) file or directory is gone."""
        self.held.drop(path)
        with self._lock:
            if path in self._files:
                self._delete(path)
                if self._derived.pop(path, None) is not None:
                    self._provenance.pop(path, None)
            else:
                prefix = path.rstrip("/") + "/"
                for sub in [p for p in self._files if p.startswith(prefix)]:
                    self._delete(sub)
            self._bump()

    def move(self, src: str, dest: str) -> None:
        """A rename inside (or out of, or into) the tagged trees."""
        self.remove(src)
        self.update(dest, written=False)

    # ------------------------------------------------------------- queries

    def tags_of(self, path: str) -> tuple[str, ...]:
        """Tags of an indexed file (empty if not indexed)."""
        with self._lock:
            entry = self._files.get(path)
        return entry[2] if entry is not None else ()

    def source_tags(self, path: str) -> tuple[str, ...]:
        """Tags of a file a copy matched: as indexed now, or as it was in the former version
        kept (a tagged file deleted since)."""
        with self._lock:
            entry = self._files.get(path)
            return entry[2] if entry is not None else self.formers.tags_of(path)

    def stored_path(self, path: str) -> str:
        """The index's own string for an indexed path (else `path`): a second table of the tagged
        files (TaggedInodes) holds it rather than an equal copy (~100 bytes a file)."""
        with self._lock:
            entry = self._files.get(path)
            same = self._by_size.get(entry[0]) if entry is not None else None
            return same.get(path, path) if same is not None else path

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def totals(self) -> dict[str, tuple[int, int]]:
        """Per tag: (files, bytes) under it now."""
        with self._lock:
            return {tag: (v[0], v[1]) for tag, v in sorted(self._totals.items())}

    def snapshot(self) -> list[tuple[str, int, int, tuple[str, ...]]]:
        """Every indexed file now: (path, size, mtime_ns, tags)."""
        with self._lock:
            return [(path, e[0], e[1], e[2]) for path, e in self._files.items()]

    def has_size(self, size: int) -> bool:
        """Whether some indexed file, or a former version of one, has this size (a cheap test)."""
        return size in self._by_size or self.formers.has_size(size)  # lock-free: dict lookups

    def match_digest(self, size: int, sha256: str, *, derived: bool = False) -> str | None:
        """The indexed file of this size and full SHA-256 (an archive member's; `derived`: a file the
        agent saw made from tagged data), if any. Only candidates not hashed yet are read."""
        if size <= 0 or size > self.max_hash_bytes:
            return None
        with self._lock:
            same = self._by_digest.get(sha256, ())
            for path in (same,) if isinstance(same, str) else same:
                if self._full[path][2] == size and (not derived or path in self._derived):
                    return path
            former = None if derived else self.formers.find(size, sha256)
            candidates: Collection[str] = self._by_size.get(size, ())
            if derived:
                candidates = [p for p in candidates if p in self._derived]
            unknown: list[str] = []
            if derived or self._hashed.get(size, 0) < len(candidates):  # else none has this digest
                unknown = [p for p in candidates if p not in self._full]
        found = next((path for path in unknown if self._full_of(path) == sha256), None)
        return found if found is not None or former is None else former.path

    def remember_digest(self, path: str, mtime_ns: int, size: int, sha256: str,
                        sample: bytes | None = None) -> None:
        """A full SHA-256 (and the sampled hash, `sample_digest`) computed elsewhere (the
        content catalog reads every tagged file anyway): kept if the file is still indexed as
        it was, so no copy has to open it again."""
        with self._lock:
            entry = self._files.get(path)
            if entry is None or entry[0] != size or entry[1] != mtime_ns:
                return
            if sample is not None:
                self._samples[path] = (mtime_ns, sample)
            if size <= self.max_hash_bytes:
                self._keep_full(path, mtime_ns, sha256)

    def read_own(self, path: str, read: Callable[[int], _T]) -> _T | None:
        """Run `read(fd)` on a tagged file opened by the agent itself; its own open and close
        are not reported as a user's reads. None if it cannot be opened or read."""
        return self._open_own(path, read)

    def match(self, fd: int, size: int) -> tuple[str, str] | None:
        """The tagged file whose content equals the open file `fd` (of `size` bytes): (path, sha256).

        Above `max_hash_bytes` the size and the sampled hash (start, middle and end blocks)
        are the whole test, and the SHA-256 returned is "" (nothing was hashed whole).
        Empty files are never matched: every empty file would be a copy of every other.
        Failing the files as they are now, a former version (formers.py) of the same SHA-256
        matches: the tagged file was edited or deleted after it was copied.
        """
        if size <= 0:
            return None
        self.settle()
        with self._lock:
            current = size in self._by_size
            former = size <= self.max_hash_bytes and self.formers.has_size(size)
        dest_full: str | None = None
        if current:
            wanted = sample_digest(fd, size)
            if size > self.max_hash_bytes:
                same = self._by_sample(size).get(wanted, ())
                return (same[0], "") if same else None
            for path in self._by_sample(size).get(wanted, ()):
                if dest_full is None:
                    dest_full = full_digest(fd, self.max_hash_bytes)
                    if dest_full is None:
                        return None
                known = self._full_of(path)
                if known == dest_full:
                    return path, dest_full
                if known is None and path in self._derived:  # gone: the sample taken as derived
                    return path, ""
        if not former:
            return None
        dest_full = dest_full or full_digest(fd, self.max_hash_bytes)
        with self._lock:
            found = self.formers.find(size, dest_full) if dest_full is not None else None
        return (found.path, found.sha256) if found is not None else None

    def _by_sample(self, size: int) -> dict[bytes, list[str]]:
        """Tagged files of one size grouped by sampled hash, built on first use and dropped
        when a file of that size changes, so a copy of 10,000 same-sized files costs one
        look-up each, not a scan of the size bucket."""
        with self._lock:
            cached = self._sample_maps.get(size)
            candidates = list(self._by_size.get(size, ()))
            version = self.version
        if cached is not None:
            return cached
        built: dict[bytes, list[str]] = {}
        for path in candidates:
            digest = self._sample_of(path, size)
            if digest is not None:
                built.setdefault(digest, []).append(path)
        with self._lock:
            if len(self._sample_maps) > 256:
                self._sample_maps.clear()  # bounded: rebuilt on demand
            if version == self.version:  # else something changed meanwhile: build again next time
                self._sample_maps[size] = built
        return built

    def read_by_us(self, path: str, kind: str) -> bool:
        """Whether an inotify `kind` ("open" or "close") event on `path` is one of the agent's
        own hashing reads (each own read accounts for one open and one close, once)."""
        key = (path, kind)
        with self._lock:
            entry = self._own_reads.get(key)
            if entry is None:
                return False
            count, until = entry
            if until < time.monotonic() or count <= 1:
                del self._own_reads[key]
            else:
                self._own_reads[key] = (count - 1, until)
            return until >= time.monotonic()

    def _open_own(self, path: str, read: Callable[[int], _T]) -> _T | None:
        held = self.held.take(path)
        if held is not None:
            return own_read(path, read, held)
        if not self.own_reads_asked:
            return own_read(path, read)
        with self._lock:
            now = time.monotonic()
            reads = self._own_reads
            # amortised O(1): rebuilding the whole map on every read made fingerprinting a
            # burst of new tagged files quadratic (every entry lives 5 s)
            while reads and next(iter(reads.values()))[1] < now:
                reads.popitem(last=False)
            for kind in ("open", "close"):
                count = reads.pop((path, kind), (0, 0.0))[0]
                reads[(path, kind)] = (count + 1, now + 5.0)
        return own_read(path, read)

    def _sample_of(self, path: str, size: int) -> bytes | None:
        with self._lock:
            entry = self._files.get(path)
            cached = self._samples.get(path)
        if entry is None:
            return None
        if cached is not None and cached[0] == entry[1]:
            return cached[1]
        digest = self._open_own(path, lambda fd: sample_digest(fd, size))
        if digest is not None:
            with self._lock:
                self._samples[path] = (entry[1], digest)
        return digest

    def _full_of(self, path: str) -> str | None:
        with self._lock:
            entry = self._files.get(path)
            cached = self._full.get(path)
        if entry is None:
            return None
        if cached is not None:
            return cached[1]
        digest = self._open_own(path, lambda fd: full_digest(fd, self.max_hash_bytes))
        if digest is not None:
            with self._lock:
                if self._files.get(path) == entry:
                    self._keep_full(path, entry[1], digest)
        return digest
