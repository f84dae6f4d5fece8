"""TagMap: which tags a path carries, from the agent.yaml `tags` map (directories or globs)."""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH112, PTH113, PTH207

from __future__ import annotations

import glob
import os
import threading

_GLOB_CHARS = frozenset("*?[")


class TagMap:
    """Resolves configured directories and globs to concrete tagged roots.

    Globs (`/home/*/projects/secret`) are expanded by `refresh()`, which the file sensor
    calls on start and on every rescan, so a new matching directory is picked up.
    """

    def __init__(self, tags: dict[str, list[str]]) -> None:
        self._patterns = {os.path.normpath(k): tuple(dict.fromkeys(v)) for k, v in tags.items()}
        self._lock = threading.Lock()
        self._roots: dict[str, tuple[str, ...]] = {}
        self.refresh()

    def refresh(self) -> dict[str, tuple[str, ...]]:
        """Re-expand globs; returns root -> tags for directories that exist now."""
        roots: dict[str, list[str]] = {}
        for pattern, tags in self._patterns.items():
            found = sorted(glob.glob(pattern)) if _GLOB_CHARS & set(pattern) else [pattern]
            for root in found:
                real = os.path.realpath(root)
                if os.path.isdir(real) or os.path.isfile(real):
                    roots.setdefault(real, []).extend(t for t in tags if t not in roots.get(real, []))
        with self._lock:
            self._roots = {root: tuple(tags) for root, tags in roots.items()}
            return dict(self._roots)

    def roots(self) -> dict[str, tuple[str, ...]]:
        """Tagged roots (files or directories) currently known, with their tags."""
        with self._lock:
            return dict(self._roots)

    def top_roots(self) -> list[str]:
        """Roots not inside another root: what needs a recursive watch."""
        ordered = sorted(self.roots())
        out: list[str] = []
        for root in ordered:
            if not any(root == top or root.startswith(top + os.sep) for top in out):
                out.append(root)
        return out

    def tags_for(self, path: str) -> list[str]:
        """Union of the tags of every root containing `path` (empty: not tagged)."""
        found: list[str] = []
        with self._lock:
            for root, tags in self._roots.items():
                if path == root or path.startswith(root + os.sep) or root == os.sep:
                    found.extend(t for t in tags if t not in found)
        return found
