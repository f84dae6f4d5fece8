"""TaggedInodes: tagged files known by their inode, so a read through another name is a tagged read.

A tagged file is tagged data whatever name it is read by. The directory marks of the tagged
trees see only the opens made through those directories: a hard link made elsewhere on the same
file system (`ln /srv/db/customers.csv ~/notes.txt`) opens the same inode with no marked parent,
and an open through a bind mount of the tree (`mount --bind /srv/db /mnt/x`), through
`/proc/PID/root/...` of a process in another mount namespace or through a container's view
reaches the marked directory under a name outside the tagged paths. So every tagged regular file
gets an inode mark of its own (opens and reads, whatever the name), and its device and inode are
kept here: an access whose path is not tagged is looked up by the descriptor's `fstat`, and is
reported as an access to the tagged file it is (`exfilguard.source.path`), under the name used.

The marks pin each tagged file's inode in the kernel's inode cache (an inode mark holds its
inode; about 1 KiB each). The table here is kept small, as it grows with the tagged trees: inode
numbers by device (one int and a dict slot per file), and the path string the fingerprint index
already holds for the same file, not a copy of it (20,000 files: 1.1 MiB against 4.8 MiB for a
(device, inode) tuple and a path string of its own each). A hard link made before the agent
started is covered the same way: the mark is on the inode, not on a name; the files that have
names outside their tree (`st_nlink` above their names inside) are counted as the trees are
marked and logged.
"""

# A walk of every tagged file: os calls, not a Path per file.
# ruff: noqa: PTH118

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator

from agent.sensors.errors import FanotifyUnavailable

log = logging.getLogger(__name__)

Mark = Callable[[str], None]


class TaggedInodes:
    """Tagged files by (device, inode): marked one by one, looked up by a descriptor."""

    def __init__(self, mark: Mark, tags_of: Callable[[str], tuple[str, ...]], limit: int = 1_000_000,
                 on_full: Callable[[int], None] | None = None,
                 shared: Callable[[str], str] | None = None) -> None:
        self._mark = mark  # an inode mark on one file: opens and reads by any name
        self._tags_of = tags_of
        # the same path as a string held elsewhere (the fingerprint index's), kept in its place
        self._shared = shared or (lambda path: path)
        # `sensors.max_file_marks`: past it, only files that already have another name are marked
        # (each mark holds its inode in the kernel's memory). An entry outlives its file's
        # replacement (an editor's save makes a new inode; a hard link may keep the old one, whose
        # content is still tagged data): the bound counts the files marked since the start
        self._limit = limit
        # told as a tree is marked, with the files left out since the last time (those made later
        # past the bound are counted into the next marking's)
        self._on_full = on_full or (lambda _count: None)
        self._lock = threading.Lock()
        # device -> inode -> path: one int per file as the key (a tuple of two was three objects)
        self._paths: dict[int, dict[int, str]] = {}
        self._count = 0
        self.linked_outside = 0  # tagged files with names outside their tree, at the last tree marked
        self.unmarked = 0  # tagged files left without a mark of their own at the bound

    def mark_tree(self, root: str) -> int:
        """Mark every regular file under `root` (or `root` itself, a tagged file); returns how
        many. Counts (and logs) those with names outside the tree."""
        marked = 0
        unmarked = self.unmarked
        names: dict[tuple[int, int], list[int]] = {}  # inode -> [names seen here, st_nlink]
        for path, st in _files(root):
            if self._note(path, st):
                marked += 1
            if st.st_nlink > 1:
                seen = names.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink])
                seen[0] += 1
        outside = sum(1 for seen, nlink in names.values() if nlink > seen)
        self.linked_outside = outside
        if self.unmarked > unmarked:
            self._on_full(self.unmarked - unmarked)
        if outside:
            log.warning("%d tagged files under %s have names outside it (hard links): reads through those "
                        "names are reported as reads of the tagged files", outside, root)
        return marked

    def mark_dir(self, directory: str) -> None:
        """Mark the regular files directly in a directory marked late (new or moved in)."""
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            self._note(entry.path, entry.stat(follow_symlinks=False))
                    except OSError:
                        continue  # gone meanwhile
        except OSError:
            return

    def mark_file(self, path: str, st: os.stat_result | None = None) -> None:
        """Mark one tagged file (created, written or moved into a tagged tree)."""
        if st is None:
            try:
                st = os.lstat(path)
            except OSError:
                return
        self._note(path, st)

    def _note(self, path: str, st: os.stat_result) -> bool:
        if not stat.S_ISREG(st.st_mode):
            return False
        inodes = self._paths.get(st.st_dev)
        known = inodes is not None and st.st_ino in inodes
        if self._count >= self._limit and st.st_nlink <= 1 and not known:
            self.unmarked += 1  # a link made later to this one is not seen
            return False
        try:
            self._mark(path)
        except FanotifyUnavailable as exc:
            log.warning("cannot mark tagged file %s: %s", path, os.strerror(exc.errno))
            return False
        path = self._shared(path)
        with self._lock:
            inodes = self._paths.setdefault(st.st_dev, {})
            if st.st_ino not in inodes:
                self._count += 1
            inodes[st.st_ino] = path
        return True

    def source(self, fd: int) -> tuple[str, tuple[str, ...]] | None:
        """The tagged file (path, tags) an open descriptor is, by its inode; None when it is none.
        Asked by the fanotify reader for an access whose path is not tagged."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        inodes = self._paths.get(st.st_dev)  # reads of dicts: no lock per event
        path = inodes.get(st.st_ino) if inodes is not None else None
        if path is None or not stat.S_ISREG(st.st_mode):
            return None
        tags = self._tags_of(path)
        return (path, tags) if tags else None  # untagged since (the tag map changed)

    def __len__(self) -> int:
        return self._count


def _files(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file below `root` (or `root`, a file) with its lstat, links not followed;
    one at a time: a list of a large tree's stat results stayed in the agent's memory (its
    allocator keeps what it once held: bench.sensors RSS 69-77 MiB with 20,000 tagged files, 55-62
    one at a time)."""
    try:
        top = os.lstat(root)
    except OSError:
        return
    if stat.S_ISREG(top.st_mode):
        yield root, top
        return
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                yield path, os.lstat(path)
            except OSError:
                continue  # gone meanwhile
