"""DerivedInodes: the files derived from tagged data by (device, inode), as the index derives them.

A derived file (an archive staged in /tmp) has an inode mark of its own, so its reads are seen
whatever its name. Moved to another directory of its file system (`mv /tmp/x.enc
~/Downloads/notes.bin`), or linked there, it keeps its inode and its mark, but not the name the
index knows it by: the read is reported under a path no look-up knows. Its device and inode name
it. The fingerprint index keeps one of these beside its derived files (`FingerprintIndex.add_derived`
notes, its removal forgets), bounded as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.sensors.fingerprints import FingerprintIndex


class DerivedInodes:
    """(st_dev, st_ino) -> the path a derived file was indexed by, and back."""

    def __init__(self) -> None:
        self._paths: dict[tuple[int, int], str] = {}
        self._keys: dict[str, tuple[int, int]] = {}

    def note(self, path: str, st: os.stat_result) -> None:
        """`path` was derived (or followed to): it is this inode from now on. Under the index's lock."""
        self.forget(path)
        key = (st.st_dev, st.st_ino)
        self._keys[path] = key
        self._paths[key] = path

    def forget(self, path: str) -> None:
        """`path` is no longer derived (the inode may be another path's by now: followed to its
        new name). Under the index's lock."""
        key = self._keys.pop(path, None)
        if key is not None and self._paths.get(key) == path:
            del self._paths[key]

    def path_of(self, dev: int, ino: int) -> str | None:
        """The derived file that is this inode, by the path it was indexed by (which it may no
        longer have); None when it is none. Lock-free: the fanotify reader asks per unknown read."""
        return self._paths.get((dev, ino))

    def __len__(self) -> int:
        return len(self._paths)


def follow(index: FingerprintIndex, old: str, new: str) -> bool:
    """A derived file (`old`, as indexed) was read under another name (`new`): moved, or linked.
    Indexed by the new name with the same provenance, and by the old one only while that still
    names the same file. False when `old` is not derived (any more) or `new` is no file."""
    found = index.provenance(old)
    if found is None or old == new or not Path(new).is_file():
        return found is not None and old == new
    index.add_derived(new, found)
    if not Path(old).is_file() or not Path(old).samefile(new):
        index.remove(old)
    return True
