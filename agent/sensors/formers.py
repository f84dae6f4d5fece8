"""FormerVersions: what a tagged file held before its last change, for a while.

A copy is compared with the tagged files as they are when the agent handles the copy's close.
A tagged file edited in place right after it was copied (`cp db.csv /media/stick/ && sed -i
... db.csv`), or deleted, no longer equals the copy by then: the agent's event threads may be
a moment behind. So when an indexed tagged file changes or goes, its last full SHA-256 is kept
as a *former version* for `KEEP_SECONDS` (at most `MAX_VERSIONS` of them, the oldest dropped
first), and a file equal to one is an exact copy of that tagged file as it was.

Only versions whose SHA-256 was known are kept: the content catalog hashes every tagged file
up to `sensors.max_hash_bytes` in the background, so a file changed before the catalog reached
it (just after the agent started, or created and edited within seconds) has no former version.
Not thread-safe on its own: the fingerprint index calls it under its lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

KEEP_SECONDS = 600.0   # a former version is matched this long after the change
MAX_VERSIONS = 4096    # former versions kept at once (the oldest dropped first)


@dataclass(frozen=True, slots=True)
class Former:
    """One former version of a tagged file: its path, size, SHA-256 and tags then."""

    path: str
    size: int
    sha256: str
    tags: tuple[str, ...]
    until: float  # monotonic time it is forgotten


class FormerVersions:
    """Former versions of tagged files by SHA-256, expiring after `keep_seconds`."""

    def __init__(self, keep_seconds: float = KEEP_SECONDS, max_versions: int = MAX_VERSIONS) -> None:
        self.keep_seconds = keep_seconds
        self.max_versions = max_versions
        self._by_digest: OrderedDict[str, Former] = OrderedDict()  # oldest first
        self._sizes: dict[int, int] = {}   # size -> versions of that size
        self._by_path: dict[str, str] = {}  # path -> SHA-256 of its latest former version
        self.dropped = 0  # forgotten at the MAX_VERSIONS bound before their time

    def add(self, path: str, size: int, sha256: str, tags: tuple[str, ...]) -> None:
        """`path` (of `size` bytes, this SHA-256 and these tags) just changed or went."""
        self._expire()
        self._forget(sha256)
        self._by_digest[sha256] = Former(path, size, sha256, tags, time.monotonic() + self.keep_seconds)
        self._sizes[size] = self._sizes.get(size, 0) + 1
        self._by_path[path] = sha256
        while len(self._by_digest) > self.max_versions:
            self._forget(next(iter(self._by_digest)))
            self.dropped += 1

    def has_size(self, size: int) -> bool:
        """Whether a former version of this size may be kept (a cheap first test)."""
        return size in self._sizes

    def find(self, size: int, sha256: str) -> Former | None:
        """The former version with this size and SHA-256, if kept and not expired."""
        self._expire()
        found = self._by_digest.get(sha256)
        return found if found is not None and found.size == size else None

    def tags_of(self, path: str) -> tuple[str, ...]:
        """The tags `path` had in its latest former version kept (empty if none)."""
        found = self._by_digest.get(self._by_path.get(path, ""))
        return found.tags if found is not None else ()

    def __len__(self) -> int:
        return len(self._by_digest)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._by_digest:
            oldest = next(iter(self._by_digest.values()))
            if oldest.until > now:
                return
            self._forget(oldest.sha256)

    def _forget(self, sha256: str) -> None:
        old = self._by_digest.pop(sha256, None)
        if old is None:
            return
        left = self._sizes.get(old.size, 0) - 1
        if left > 0:
            self._sizes[old.size] = left
        else:
            self._sizes.pop(old.size, None)
        if self._by_path.get(old.path) == sha256:
            del self._by_path[old.path]
