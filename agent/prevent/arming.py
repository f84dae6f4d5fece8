"""Arming: which of the content guard's permission marks are in place, and when they move.

The guard keeps one invariant: at every moment either every removable mount carries the
permission mark (FAN_OPEN_PERM on its file system: "the sticks are armed"), or the tagged trees
and the derived files the fingerprint index knows do. So no process can read tagged data and
open a file on removable media for writing without the agent deciding one of the two opens.

  unarmed    no process is known to carry tagged data: the sticks are not marked (a copy of
             holiday photos waits for no answer per file), the tagged trees and derived files
             are. The first open of tagged or derived data marks the sticks before it is
             answered (the responder does, or the agent), then looks whether the opener or a
             process of its group holds a file on removable media open for writing (opened
             while nothing asked): if so it is decided as any tagged open of a writer (refused);
             otherwise it is allowed and its process is a carrier.
  armed      the sticks are marked; the tagged trees are asked only while a file on removable
             media is open for writing (decide.py), derived files always. Carriers: processes
             that opened tagged or derived data (heard, or asked), and those lineage says read
             some (pipes, parents before a fork).
  disarming  every carrier is gone (pid and start time) for GONE_SECONDS, its process group
             too, and lineage
             names no live process that read tagged data lately: the tagged trees are marked
             first, the responder reads the tagged opens queued meanwhile, the carriers are
             looked at again, and only then the sticks' marks come off.

The sticks are marked first and the writers looked for after (not the other way round): a
pipeline's `gzip > stick/x` opening its file between the look and the mark would not be seen
by either. A carrier stops counting RECENT_SECONDS after its last tagged open unless it holds
tagged or derived data open: the decision would not refuse its write any more either.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH113, PTH123, PTH208

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from agent.prevent import procs
from agent.prevent.decide import RECENT_SECONDS
from agent.prevent.errors import PreventError
from agent.prevent.permission import FAN_EVENT_ON_CHILD, FAN_OPEN, FAN_OPEN_PERM, PermissionGroup
from agent.sensors.fingerprints import MAX_DERIVED
from agent.sensors.lineage import DataFlow, is_alive
from agent.sensors.tags import TagMap

log = logging.getLogger(__name__)

MAX_CARRIERS = 4096   # processes remembered as carrying tagged data (oldest forgotten: see alive)
# A carrier gone (and its group) still counts this long: what it wrote is known as derived only
# once the file sensor's events of it are read and the fingerprint index holds the file (about a
# second under load). Disarmed at once, `cp db /tmp/x` and then `cp /tmp/x stick/` typed as two
# commands (each a group of its own) found /tmp/x not yet asked and the stick not marked.
GONE_SECONDS = 5.0


def start_time(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot; /proc/PID/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` lives (signal 0 to the group)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (EPERM: not ours to signal)
    return True


def removable_writers(candidates: Iterable[int], devs: Collection[int]) -> list[list[int | str]]:
    """[pid, pgid, path] of each of `candidates` that holds a file on one of the removable file
    systems `devs` open for writing."""
    found: list[list[int | str]] = []
    for pid in dict.fromkeys(candidates):
        family = procs.family(pid)
        if family is None:
            continue
        for path, dev, writing in procs.open_files(pid):
            if writing and dev in devs:
                found.append([pid, family[1], path])
                break
    return found


def mark_sticks(group: PermissionGroup, media: dict[int, str], *, remove: bool = False) -> None:
    """Add (or remove) the permission mark on every removable file system in `media`
    (device number -> mount point); one gone meanwhile is left to the mount table's news."""
    for dev, point in list(media.items()):
        try:
            group.place_on_medium(point, inside=True, dev=dev, remove=remove)
        except Exception:  # unmounted meanwhile: its marks went with it
            log.debug("prevent: the mark on %s could not be %s", point, "removed" if remove else "placed")


@dataclass(slots=True)
class _Carrier:
    start: int | None   # /proc/PID/stat start time; None: gone when it was noted
    pgid: int
    last: float         # wall time of its latest tagged open
    gone: float = 0.0   # wall time it (and its group) was first found gone; 0: not yet


class Carriers:
    """Processes known to carry tagged data, by pid and start time (a reused pid is another
    process), and whether any of them, their groups, or lineage's carriers live."""

    def __init__(self, me: int, flow: DataFlow | None, holds_tagged: Callable[[list[str]], bool]) -> None:
        self._me = me
        self._my_group = os.getpgid(me)
        self._flow = flow
        self._holds_tagged = holds_tagged
        self._lock = threading.Lock()
        self._known: OrderedDict[int, _Carrier] = OrderedDict()
        # wall time a carrier was last forgotten at the bound (it may live): the sticks stay armed
        # for RECENT_SECONDS after it, the time its read keeps its writes refused
        self.dropped_at = 0.0

    def note(self, pid: int, pgid: int = 0, when: float = 0.0) -> None:
        """`pid` opened tagged or derived data (at wall time `when`; its group `pgid` if known)."""
        if pid == self._me:
            return
        start = start_time(pid)
        if not pgid and start is not None:
            family = procs.family(pid)
            pgid = family[1] if family is not None else 0
        carrier = _Carrier(start, pgid if pgid != self._my_group else 0, when or time.time())
        with self._lock:
            self._known.pop(pid, None)
            self._known[pid] = carrier
            while len(self._known) > MAX_CARRIERS:
                self._known.popitem(last=False)
                self.dropped_at = time.time()

    def adopt(self, other: Carriers) -> None:
        """Take the carriers another guard knows (a rebuild of the sensors hands them over)."""
        with other._lock:
            known = list(other._known.items())
        with self._lock:
            for pid, carrier in known:
                self._known.setdefault(pid, carrier)
            self.dropped_at = max(self.dropped_at, other.dropped_at)

    def scan(self) -> None:
        """Note every process holding tagged or derived data open now (at the guard's start: what
        they read before is not known, only what they hold)."""
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != self._me and self._holds_tagged(procs.open_paths(int(name))):
                self.note(int(name))

    def count(self) -> int:
        """Carriers remembered now (alive or not yet looked at)."""
        with self._lock:
            return len(self._known)

    def alive(self) -> bool:
        """Whether any process may still carry tagged data: a carrier alive (and within
        RECENT_SECONDS of its last tagged open, or holding tagged data open), a process of a
        gone carrier's group within RECENT_SECONDS, a carrier gone less than GONE_SECONDS ago,
        or a live process lineage says read tagged data within RECENT_SECONDS. Forgets the
        carriers that no longer count."""
        now = time.time()
        with self._lock:
            known = list(self._known.items())
            dropped_at = self.dropped_at
        if now - dropped_at <= RECENT_SECONDS:
            return True  # one forgotten at the bound may live (4,096 processes read tagged data)
        gone = []
        found = False
        for pid, carrier in known:
            fresh = now - carrier.last <= RECENT_SECONDS
            if carrier.start is not None and start_time(pid) == carrier.start:
                if fresh or self._holds_tagged(procs.open_paths(pid)):
                    found = True
                    break
                gone.append((pid, carrier))  # alive, but its read too long ago to refuse a write
                continue
            if fresh and carrier.pgid > 1 and group_alive(carrier.pgid):
                found = True
                break
            carrier.gone = carrier.gone or now
            if now - carrier.gone < GONE_SECONDS:
                found = True
                break
            gone.append((pid, carrier))
        with self._lock:
            for pid, carrier in gone:
                if self._known.get(pid) is carrier:
                    del self._known[pid]
        if found:
            return True
        if self._flow is not None:
            return any(pid != self._me and is_alive(pid, born)
                       for pid, born in self._flow.carriers(now - RECENT_SECONDS))
        return False


class Marks:
    """The permission group's and the hearing group's marks: the tagged trees (heard always,
    asked while `trees`), the derived files (asked while `derived_asked`: the sticks unarmed;
    bounded), the removable mounts (heard always, asked while `sticks`). Placed and removed under
    `lock`, which the guard also holds while it replaces the groups."""

    def __init__(self, tags: TagMap, removable: dict[int, str]) -> None:
        self.tags = tags
        self.removable = removable  # st_dev of each removable file system -> its mount point
        self.group: PermissionGroup | None = None
        self.hearing: PermissionGroup | None = None
        self.openers: PermissionGroup | None = None  # who opens files on removable media (fid)
        self.lock = threading.RLock()
        self.trees = False    # the tagged trees carry FAN_OPEN_PERM
        self.sticks = True    # the removable mounts do (start armed: earlier carriers are unknown)
        self.marked: list[str] = []  # tagged directories (and files) marked
        self.derived: OrderedDict[str, None] = OrderedDict()  # derived files known
        self.derived_asked = False

    def open_groups(self) -> None:
        """Make the permission group, the hearing group and the openers' group (PreventError: one
        could not be made; none is left open)."""
        made: list[PermissionGroup] = []
        try:
            for kind in ({}, {"hearing": True}, {"hearing": True, "fid": True}):
                made.append(PermissionGroup(**kind))
        except Exception:
            for group in made:
                group.close()
            raise
        self.group, self.hearing, self.openers = made

    def close_groups(self) -> None:
        """Close the groups (the kernel allows every open still waiting on the permission group)."""
        with self.lock:
            groups, self.group, self.hearing, self.openers = (
                (self.group, self.hearing, self.openers), None, None, None)
        for group in groups:
            if group is not None:
                group.close()

    def mark_tagged(self) -> None:
        """Mark every directory (and tagged file) of the tagged trees as they are now: heard
        always, asked too while `trees`."""
        marked = []
        with self.lock:
            for root in self.tags.top_roots():
                if os.path.isfile(root):
                    if self._place_tagged(root, 0):
                        marked.append(root)
                    continue
                for dirpath, _dirs, _files in os.walk(root):
                    if self._place_tagged(dirpath, FAN_EVENT_ON_CHILD):
                        marked.append(dirpath)
            self.marked = marked

    def _place_tagged(self, path: str, child: int) -> bool:
        group, hearing = self.group, self.hearing
        if group is None or hearing is None or not hearing.place(path, FAN_OPEN | child):
            return False
        return not self.trees or group.place(path, FAN_OPEN_PERM | child)

    def mark_dir(self, path: str) -> None:
        """A directory appeared in a tagged tree: hear (and while `trees`, ask) its opens too."""
        with contextlib.suppress(Exception), self.lock:
            if self._place_tagged(path, FAN_EVENT_ON_CHILD):
                self.marked.append(path)

    def arm_trees(self) -> None:
        """Ask every open in the tagged trees (directories made since are marked now too)."""
        with self.lock:
            self.trees = True
            self.mark_tagged()

    def disarm_trees(self) -> None:
        """Hear the tagged trees' opens only."""
        with self.lock:
            for path in self.marked:
                with contextlib.suppress(Exception):
                    if self.group is not None:
                        self.group.place(path, FAN_OPEN_PERM, remove=True)
            self.trees = False

    def mark_derived(self, path: str) -> None:
        """A derived file: its opens asked while `derived_asked` (at most MAX_DERIVED files, the
        oldest let go)."""
        with contextlib.suppress(Exception), self.lock:
            if self.group is None or (self.derived_asked and not self.group.place(path, FAN_OPEN_PERM)):
                return
            self.derived.pop(path, None)
            self.derived[path] = None
            while len(self.derived) > MAX_DERIVED:
                oldest = self.derived.popitem(last=False)[0]
                if self.derived_asked:
                    with contextlib.suppress(Exception):
                        self.group.place(oldest, FAN_OPEN_PERM, remove=True)

    def ask_derived(self, asked: bool) -> None:
        """Ask (or no longer ask) every open of the derived files known."""
        with self.lock:
            if asked == self.derived_asked:
                return
            self.derived_asked = asked
            for path in list(self.derived):
                try:
                    if self.group is not None and not self.group.place(path, FAN_OPEN_PERM, remove=not asked):
                        del self.derived[path]  # gone
                except Exception:  # not marked (removed meanwhile and made again): nothing to take off
                    log.debug("prevent: the mark on derived file %s could not be changed", path)

    def add_medium(self, point: str, *, inside: bool) -> int:
        """A removable mount appeared: its opens heard always (the responder learns who opened a
        file there while it was not asked), asked while `sticks`. Its device number, or -1 when
        it is not that file system (gone, or not a mount root)."""
        with self.lock:
            if self.group is None or self.hearing is None:
                return -1
            dev = self._hear_medium(point, inside=inside)
            if dev >= 0:
                self.removable[dev] = point
                if self.sticks:
                    self.group.place_on_medium(point, inside=True, dev=dev)
            return dev

    def remove_medium(self, point: str) -> list[int]:
        """A removable mount went: its device numbers (its marks are taken off those alone)."""
        with self.lock:
            gone = [dev for dev, known in self.removable.items() if known == point]
            for dev in gone:
                del self.removable[dev]
                for group, mask in ((self.group, FAN_OPEN_PERM), (self.hearing, FAN_OPEN),
                                    (self.openers, FAN_OPEN)):
                    with contextlib.suppress(Exception):
                        if group is not None:
                            group.place_on_medium(point, inside=True, dev=dev, remove=True, mask=mask)
            return gone

    def remark_media(self) -> None:
        """New groups: every removable mount heard and asked (armed: who carries is not known)."""
        with self.lock:
            self.sticks = True
            for dev, point in list(self.removable.items()):
                with contextlib.suppress(Exception):
                    if self.group is not None:
                        self._hear_medium(point, inside=True, dev=dev)
                        self.group.place_on_medium(point, inside=True, dev=dev)

    def _hear_medium(self, point: str, *, inside: bool, dev: int = -1) -> int:
        # in the openers' group (no descriptor per event); a file system whose files have no
        # handle to report (an old kernel's exFAT) in the hearing group instead: its queued
        # events keep the mount busy until the responder reads them (within a tick)
        try:
            if self.openers is not None:
                return self.openers.place_on_medium(point, inside=inside, dev=dev, mask=FAN_OPEN)
        except PreventError:
            log.info("prevent: %s reports no file handles: heard with descriptors", point)
        return -1 if self.hearing is None else self.hearing.place_on_medium(
            point, inside=inside, dev=dev, mask=FAN_OPEN)
