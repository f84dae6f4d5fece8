"""A tagged tree's regular files with their size and modification time, by a scandir walk."""

# Called for every tagged file: os calls, not a Path per file.
# ruff: noqa: PTH116

from __future__ import annotations

import os
import stat
from collections.abc import Iterable


def regular_files(root: str) -> Iterable[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every regular file below root, without following links."""
    try:
        st = os.stat(root, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        yield root, st.st_size, st.st_mtime_ns
        return
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            est = entry.stat(follow_symlinks=False)
                            yield entry.path, est.st_size, est.st_mtime_ns
                    except OSError:
                        continue  # vanished while we walked
        except OSError:
            continue
