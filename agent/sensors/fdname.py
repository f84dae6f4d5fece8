"""The name of a file fanotify handed over a descriptor of, as /proc spells it (" (deleted)")."""

from __future__ import annotations

import contextlib
import os

DELETED = " (deleted)"  # what /proc appends to the name of a file that has none left


def live_name(fd: int, path: str) -> str:
    """`path` as /proc names a descriptor's file, without the " (deleted)" the kernel appends
    once the file has no name left. A file that still has a name either is called so itself
    (`loot.db (deleted)` on a stick: kept) or was made with O_TMPFILE, shown as `dir/#INODE`,
    and given a name with linkat since: that name, looked up in the directory it was made in
    (`#INODE` stays when it was linked elsewhere)."""
    bare = path[: -len(DELETED)]
    try:
        st = os.fstat(fd)
    except OSError:
        return bare
    if st.st_nlink == 0:
        return bare
    folder, _, name = bare.rpartition("/")
    if name != f"#{st.st_ino}":
        return path
    with contextlib.suppress(OSError), os.scandir(folder or "/") as entries:
        for entry in entries:
            if entry.inode() == st.st_ino and not entry.name.startswith("#"):
                return entry.path
    return bare
