"""DerivedSlices: a written file whose bytes are one part of a file derived from tagged data.

`split -b 100M /tmp/d.txz /tmp/part.` then `cp /tmp/part.* /media/stick/`: each part is a
run of the staged archive's bytes, at a multiple of the part size (the last part: at the
end). On a busy machine `split` may have read the archive and exited before the agent
marked the archive as derived, so nothing tied the parts to it, and a part in the middle of
a compressed stream decompresses to nothing a content match could find. The parts are
compared, byte for byte, with the recently derived files instead: a part found whole at one
of those offsets carries the derived file's provenance (the tagged files tar read).
"""

# Paths as the index keeps them (str), looked at with os calls as the rest of the sensors do.
# ruff: noqa: PTH116, PTH120

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from agent.sensors.fingerprints import FingerprintIndex

MAX_RECENT = 64            # derived files compared with (the most recent)
MAX_OFFSETS = 1024         # part-sized offsets looked at per derived file
MIN_PART_BYTES = 256       # smaller writes are not matched: a few bytes equal by chance
MAX_SIBLINGS = 4096        # entries of its directory looked through for a renamed derived file
MAX_COMPARE_BYTES = 1 << 30  # a part larger than this is matched on its head and tail only
_HEAD = 4096
_PROBE = 64                # bytes compared at each offset before the whole part is
_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Slice:
    """Where a written file's bytes were found: the derived file, the offset, its size."""

    path: str    # as it was derived (its provenance's name)
    offset: int
    size: int    # of the derived file
    now: str = ""  # where it is now, if it was renamed since


class DerivedSlices:
    """The recently derived files of an index, and which of them a written file is a part of."""

    def __init__(self, index: FingerprintIndex) -> None:
        self.index = index
        self._lock = threading.Lock()
        # path as derived -> (st_dev, st_ino) then: zip writes a temporary name and renames it,
        # and the index hears of the final name a moment later than a copy of its parts may be
        # examined
        self._recent: OrderedDict[str, tuple[int, int]] = OrderedDict()
        for path in index.watch_derived(self._derived)[-MAX_RECENT:]:
            self._derived(path)

    def _derived(self, path: str) -> None:
        # called under the index's lock: a stat and a note
        try:
            st = os.stat(path)
        except OSError:
            return
        with self._lock:
            self._recent.pop(path, None)
            self._recent[path] = (st.st_dev, st.st_ino)
            while len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)

    def find(self, fd: int, size: int) -> Slice | None:
        """The derived file holding the open file `fd` (`size` bytes) as one part of it, at a
        multiple of `size` or at its end; None when none does (or nothing was derived)."""
        if size < MIN_PART_BYTES or not self._recent:
            return None
        try:
            head = os.pread(fd, min(size, _HEAD), 0)
        except OSError:
            return None
        if len(head) < min(size, _HEAD) or head.count(head[:1]) == len(head):
            return None  # one repeated byte (zero fill) is in every file
        with self._lock:
            recent = list(reversed(self._recent.items()))
        for path, (dev, ino) in recent:
            if not self.index.is_derived(path):
                continue
            where = _named(path, dev, ino)
            if where is None:
                continue
            found = self.index.read_own(where, functools.partial(_part_at, fd=fd, size=size, head=head,
                                                                 whole=where != path))
            if found is not None and found[0] >= 0:
                return Slice(path, *found, now=where)
        return None


def _named(path: str, dev: int, ino: int) -> str | None:
    """Where the file derived as `path` is now: there, or renamed within its directory (zip's
    temporary `ziXXXXXX` renamed to its final name); None when it is gone."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (dev, ino):
            return path
    except OSError:
        pass
    try:
        with os.scandir(os.path.dirname(path)) as entries:
            for seen, entry in enumerate(entries):
                if seen >= MAX_SIBLINGS:
                    break
                if entry.inode() == ino and entry.is_file(follow_symlinks=False) \
                        and entry.stat(follow_symlinks=False).st_dev == dev:
                    return entry.path
    except OSError:
        pass
    return None


def _part_at(derived: int, fd: int, size: int, head: bytes, *, whole: bool = False) -> tuple[int, int]:
    """(offset, size of `derived`): where in `derived` the `size` bytes of `fd` are found
    whole, -1 if nowhere: at the start (head -c), at the end (the last part of a split, tail
    -c), or, for a part of the sizes `split -b` cuts (a multiple of 1 KiB or of 1 kB: 64K,
    100M, 100MB), at a multiple of its size. Other sizes are not looked for in the middle: a
    `cp -r` of many files of every size would read each derived file at every offset. A derived
    file no larger than the part is the exact match's, not a part's, unless `whole` (it was
    renamed since it was derived: the index knows it by its old name, so no exact match finds
    it; `7z a -v` writes each volume as NAME.tmp and renames it, the first one last of all,
    and a `cp` of the volumes right after was examined before the agent followed that rename)."""
    total = os.fstat(derived).st_size
    if whole and total == size:
        found = os.pread(derived, len(head), 0) == head and _same(derived, 0, fd, size)
        return (0 if found else -1), total
    if total <= size:
        return -1, total
    offsets = [0, total - size]
    if size % 1024 == 0 or size % 1000 == 0:
        offsets.extend(range(size, total - size, size))
    probe = head[:_PROBE]
    for offset in offsets[: MAX_OFFSETS + 2]:
        if os.pread(derived, _PROBE, offset) == probe and os.pread(derived, len(head), offset) == head \
                and _same(derived, offset, fd, size):
            return offset, total
    return -1, total


def _same(derived: int, offset: int, fd: int, size: int) -> bool:
    """Whether `size` bytes of `derived` from `offset` equal the whole of `fd`."""
    if size > MAX_COMPARE_BYTES:
        return os.pread(derived, _HEAD, offset + size - _HEAD) == os.pread(fd, _HEAD, size - _HEAD)
    done = 0
    while done < size:
        want = min(_BLOCK, size - done)
        if os.pread(derived, want, offset + done) != os.pread(fd, want, done):
            return False
        done += want
    return True
