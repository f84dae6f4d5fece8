"""TagMap: which tags a path carries, from the agent.yaml `tags` map (directories or globs)."""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH112, PTH113, PTH118, PTH206, PTH208

from __future__ import annotations

import os
import threading
from fnmatch import fnmatchcase

_GLOB_CHARS = frozenset("*?[")
_DIR_CACHE = 4096


class TagMap:
    """Resolves configured directories and globs to concrete tagged roots.

    `refresh()` re-expands the map: which roots exist now, and the anchors, the existing
    directories whose entries decide whether a root appears or goes (for a missing path its
    nearest existing ancestor; for a glob every directory a wildcard is matched in). The file
    sensor watches the anchors, so a tagged path made after start is picked up.
    """

    def __init__(self, tags: dict[str, list[str]]) -> None:
        self._patterns = {os.path.normpath(k): tuple(dict.fromkeys(v)) for k, v in tags.items()}
        self._lock = threading.Lock()
        self._roots: dict[str, tuple[str, ...]] = {}
        self._by_dir: dict[str, tuple[str, ...]] = {}  # directory -> tags_for it (bounded)
        self._anchors: dict[str, tuple[str, ...]] = {}
        self._missing: list[str] = []
        self.refresh()

    def refresh(self) -> dict[str, tuple[str, ...]]:
        """Re-expand globs; returns root -> tags for paths that exist now."""
        roots: dict[str, list[str]] = {}
        anchors: dict[str, set[str]] = {}
        missing: list[str] = []
        for pattern, tags in self._patterns.items():
            found = _expand(pattern, anchors)
            if not found:
                missing.append(pattern)
            for root in found:
                real = os.path.realpath(root)
                roots.setdefault(real, []).extend(t for t in tags if t not in roots.get(real, []))
        with self._lock:
            self._roots = {root: tuple(tags) for root, tags in roots.items()}
            self._by_dir = {}
            self._anchors = {path: tuple(sorted(names)) for path, names in anchors.items()}
            self._missing = missing
            return dict(self._roots)

    def roots(self) -> dict[str, tuple[str, ...]]:
        """Tagged roots (files or directories) currently known, with their tags."""
        with self._lock:
            return dict(self._roots)

    def anchors(self) -> dict[str, tuple[str, ...]]:
        """Existing directory -> entry names (glob patterns) whose creation or removal there
        may make a tagged root appear or go (as of the last `refresh()`)."""
        with self._lock:
            return dict(self._anchors)

    def missing(self) -> list[str]:
        """Configured paths (or globs) with no existing match (as of the last `refresh()`)."""
        with self._lock:
            return list(self._missing)

    def all_tags(self) -> list[str]:
        """Every configured tag, whether or not its paths exist."""
        return list(dict.fromkeys(t for tags in self._patterns.values() for t in tags))

    def top_roots(self) -> list[str]:
        """Roots not inside another root: what needs a recursive watch."""
        ordered = sorted(self.roots())
        out: list[str] = []
        for root in ordered:
            if not any(root == top or root.startswith(top + os.sep) or top == os.sep for top in out):
                out.append(root)
        return out

    def tags_for(self, path: str) -> list[str]:
        """Union of the tags of every root containing `path` (empty: not tagged)."""
        return list(self.tags_of(path))

    def tags_of(self, path: str) -> tuple[str, ...]:
        """`tags_for` as the shared tuple it is kept as (asked per file event: no copy, and no
        lock once the path's directory was answered)."""
        parent = path.rpartition(os.sep)[0] or os.sep
        # one read of each dict (refresh swaps them whole): no lock on the way of an event
        by_dir, roots = self._by_dir, self._roots
        if path not in roots:
            # the roots holding a path that is not a root itself are those holding its
            # directory: asked for at every file event, answered once per directory
            cached = by_dir.get(parent)
            if cached is not None:
                return cached
            with self._lock:
                if len(self._by_dir) >= _DIR_CACHE:
                    self._by_dir = {}
                cached = self._by_dir[parent] = tuple(self._scan(parent))
                return cached
        with self._lock:
            return tuple(self._scan(path))

    def _scan(self, path: str) -> list[str]:
        # under the lock
        found: list[str] = []
        for root, tags in self._roots.items():
            if path == root or path.startswith(root + os.sep) or root == os.sep:
                found.extend(t for t in tags if t not in found)
        return found


def _expand(pattern: str, anchors: dict[str, set[str]]) -> list[str]:
    """Existing paths matching `pattern` (glob semantics: a wildcard matches no dotfile unless
    its pattern starts with a dot), level by level; records the anchors it passes on the way."""
    parts = [p for p in pattern.split(os.sep) if p]
    if not parts:
        return [os.sep] if os.path.isdir(os.sep) else []
    level = [os.sep]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        wildcard = bool(_GLOB_CHARS & set(part))
        found: list[str] = []
        for parent in level:
            if wildcard:
                try:
                    names = sorted(n for n in os.listdir(parent) if fnmatchcase(n, part)
                                   and (part.startswith(".") or not n.startswith(".")))
                except OSError:
                    continue
            else:
                names = [part]
            hits = [path for path in (os.path.join(parent, name) for name in names)
                    if os.path.isdir(path) or (last and os.path.isfile(path))]
            # Watch the parent when a new entry there could match (a wildcard), when the path
            # stops here (the next step is missing), or for the root itself (its removal).
            if wildcard or last or not hits:
                anchors.setdefault(parent, set()).add(part)
            found += hits
        level = found
        if not level:
            break
    return level
