"""Decider: whether an open waiting in a permission event carries tagged data onto removable media.

Two questions, each answered from what the kernel holds still and what lineage recorded:

  an open on removable media   does the opener (or its pipeline) carry tagged data? It does
                               when it holds a tagged (or derived) file open now, or opened a
                               tagged file in the last RECENT_SECONDS, or its parent,
                               grandparent or a process of its group did in the last
                               GROUP_SECONDS (the guard hears
                               of every tagged open in the order the kernel queued it, before
                               the write's open); or when lineage (agent/sensors/lineage.py)
                               says it read tagged data in the last RECENT_SECONDS (pipes and
                               forks included), or its parent or grandparent did in the last
                               GROUP_SECONDS. Only opens for
                               writing are refused.
  an open of a tagged file     is the opener writing to removable media already (it, or a
                               process of its group, holds a file there open for writing)?
                               `tar cf /stick/x.tar /srv/db`, `cat f > /stick/x` and zip open
                               the stick first. Tagged trees are marked for this only while a
                               file on removable media is open for writing ("armed"), so
                               tagged reads cost nothing the rest of the time.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.prevent import grants, procs, verdicts
from agent.sensors import procinfo
from agent.sensors.lineage import DataFlow
from agent.sensors.provenance import Provenance
from agent.sensors.tags import TagMap
from common.agentconfig import PreventException, PreventSettings

log = logging.getLogger(__name__)

RECENT_SECONDS = 300.0   # tagged data read longer ago than this does not block a write
GROUP_SECONDS = 10.0     # ... by its parent, grandparent or group (a pipeline runs at once)
MAX_WRITERS = 4096       # processes remembered as writing to removable media
MAX_GROUPS = 4096        # processes, and process groups, remembered as having opened tagged files


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal: why (for people), and the tagged data it protects."""

    why: str
    source: str
    tags: tuple[str, ...]


class DerivedIndex(Protocol):
    """What the decider asks of the fingerprint index: which files are derived from tagged data."""

    def is_derived(self, path: str) -> bool:
        """Whether `path` is a file derived from tagged data."""

    def provenance(self, path: str) -> Provenance | None:
        """Where a derived file's data came from."""


@dataclass(slots=True)
class _Writer:
    pgid: int
    path: str
    since: float   # monotonic time its open was allowed (the fd appears only once answered)


class Decider:
    """The decisions of the content guard; called on its decision thread only (its tables
    are also read by `armed_wanted`, under a lock)."""

    def __init__(self, settings: PreventSettings, tags: TagMap, index: DerivedIndex,
                 flow: DataFlow | None, removable_dev: dict[int, str]) -> None:
        self.tags = tags
        self.index = index
        self.flow = flow
        self.removable_dev = removable_dev  # st_dev of each guarded removable file system -> mount point
        self._me = os.getpid()
        self._allowed_uids = _ids(settings.allowed_users, lambda n: pwd.getpwnam(n).pw_uid, "user")
        # the grants honoured now: replaced whole when a push changes only them (sensors/wiring.py)
        self.exceptions = list(settings.exceptions)
        # the serial of the device a path on removable media is on; set by the guard
        self.device_serial: Callable[[str], str] = lambda _path: ""
        # an exception let an open go that the verdict would have refused: set by the guard
        self.on_exception: Callable[[int, str, PreventException, Verdict], None] = lambda *_: None
        self._allowed_gids = _ids(settings.allowed_groups, lambda n: grp.getgrnam(n).gr_gid, "group")
        self._lock = threading.Lock()
        self._spared: dict[str, None] = {}  # stick paths allowed users or groups opened for writing
        self._writers: dict[int, _Writer] = {}            # pid -> what it writes on removable media
        # pid / pgid -> (when, tagged path, tags) of its latest tagged open
        self._opened: dict[int, tuple[float, str, tuple[str, ...]]] = {}
        self._groups: dict[int, tuple[float, str, tuple[str, ...]]] = {}
        self.verdicts = verdicts.VerdictCache(self._me)  # clean verdicts reused at later opens
        # where a clean verdict goes (pid, ppid, pgid, chain, lineage version): this cache, or the
        # guard's responder process, which answers the process's later opens (responder.py)
        self.remember: Callable[[int, int, int, list[int], int], None] = self.verdicts.remember
        # a process was noted as writing to removable media (pid, pgid): told to the guard's
        # responder before the open's answer, so it hands that process's and its group's tagged
        # opens to the agent
        self.on_writer: Callable[[int, int], None] = lambda _pid, _pgid: None

    def flow_version(self) -> int | None:
        """DataFlow.version now (None: no lineage): a clean verdict holds while it stays."""
        return self.flow.version if self.flow is not None else None

    # ------------------------------------------------------------- exceptions

    def exempt(self, uid: int, gids: tuple[int, ...]) -> bool:
        """Whether prevent.allowed_users/allowed_groups leave this user alone."""
        return uid in self._allowed_uids or any(g in self._allowed_gids for g in gids)

    def _spare(self, path: str) -> None:
        with self._lock:
            self._spared[path] = None
            while len(self._spared) > MAX_WRITERS:
                del self._spared[next(iter(self._spared))]

    def spared(self, path: str) -> bool:
        """Whether an allowed user or group opened this file on a stick for writing (the
        quarantine leaves their copies: imaging staff copy tagged data on purpose)."""
        with self._lock:
            return path in self._spared

    def _excepted(self, pid: int, uid: int, stick_path: str, verdict: Verdict) -> bool:
        """Whether a time-boxed exception lets this user put data on this device now; reported."""
        if not self.exceptions:
            return False
        grant = grants.covering(self.exceptions, procinfo.user_name(uid), self.device_serial(stick_path))
        if grant is not None:
            self.on_exception(pid, stick_path, grant, verdict)
        return grant is not None

    # ------------------------------------------------------ removable media

    def removable_open(self, pid: int, path: str) -> Verdict | None:
        """An open on removable media: a Verdict to refuse it, None to let it go."""
        writing = procs.opens_for_writing(pid, path)
        if writing is False:
            return None  # reading from the stick takes nothing away
        version = self.flow_version() or 0  # before lineage is asked
        who = procs.identity(pid)
        if who is None:
            return None  # gone already
        ppid, pgid, uid, gids = who
        if self.exempt(uid, gids):
            self._spare(path)
            return None
        verdict, chain = self._carried(pid, ppid, pgid)
        if verdict is None:
            verdict = self._writer_unless_heard(pid, pgid, chain, path)
            if verdict is None:
                self.remember(pid, ppid, pgid, chain, version)
                return None
        if self._excepted(pid, uid, path, verdict):
            self.note_writer(pid, pgid, path)
            return None
        return verdict

    def allow_known(self, pid: int, path: str) -> str:
        """The fast path of an open on removable media (the responder): "read" or "write" when
        the opener's clean verdict (verdicts.py) still holds, checked again from descriptors held
        on it, so the open may go on (a write noted as one); "": decide in full."""
        clean = self.verdicts.get(pid)
        if clean is None:
            return ""
        writing, family = clean.handle.look(os.fsencode(path))
        if writing is not True:
            return "read" if writing is False else ""  # reading takes nothing away; None: unknown
        return "write" if self._still_clean(pid, clean, family, path) else ""

    def allow_clean(self, pid: int, path_of: Callable[[], str | None]) -> str:
        """The responder's first look at an open on removable media, with the fewest reads:
        "read" when the open's flags say so; "write" or "any" (the flags not told at one look:
        the opener still on its way into the open, or in another call) when the opener's clean
        verdict holds as for a write (noted as a writer), so the open may go on (what a process
        may write it may read); "": ask `allow_known`. The event's path (`path_of`) is read only
        for a process of more than one thread (procs.opens_for_writing)."""
        clean = self.verdicts.get(pid)
        if clean is None:
            return ""
        writing, family = clean.handle.look(lambda: os.fsencode(path_of() or ""), tries=1)
        if writing is False:
            return "read"
        if not self._still_clean(pid, clean, family, ""):
            return ""
        return "write" if writing else "any"

    def _still_clean(self, pid: int, clean: verdicts.Clean, family: tuple[int, int] | None,
                     path: str) -> bool:
        """Whether everything `clean` rests on holds (module docstring of verdicts.py), for an
        open for writing of `path` (remembered as a writer when it does)."""
        if family is None or not clean.unchanged(family):
            self.verdicts.drop(pid)  # gone (a reused pid reads nothing), or a new parent or group
            return False
        held = clean.handle.held_paths()
        if held is None or self._holding(held) is not None:
            return False
        chain = list(clean.chain)
        version = self.flow_version()
        if version is not None and version != clean.flow_version:
            if self._lineage(chain, time.time()) is not None:
                return False
            clean.flow_version = version
        return self._writer_unless_heard(pid, clean.pgid, chain, path) is None

    def _writer_unless_heard(self, pid: int, pgid: int, chain: list[int], path: str) -> Verdict | None:
        """Remember the opener as a writer unless a tagged open of it, its parent, grandparent or
        group was heard: one step under the lock, as a tagged open is noted and the writers
        looked at in one (allow_tagged, tagged_open), so of two opens decided at once on the two
        threads (a pipeline's write and its tagged read) one always sees the other."""
        with self._lock:
            verdict = self._heard_now(chain, pgid, time.time())
            if verdict is None:
                self._add_writer(pid, pgid, path)
        if verdict is None:
            self.on_writer(pid, pgid)
        return verdict

    def is_writer(self, pid: int) -> bool:
        """Whether the process is remembered as writing to removable media."""
        with self._lock:
            return pid in self._writers

    def note_writer(self, pid: int, pgid: int, path: str) -> None:
        """Remember the process as writing `path` on removable media (an open allowed elsewhere)."""
        with self._lock:
            self._add_writer(pid, pgid, path)
        self.on_writer(pid, pgid)

    def writer_groups(self) -> list[list[int]]:
        """[pid, pgid] of every process remembered as writing to removable media."""
        with self._lock:
            return [[pid, writer.pgid] for pid, writer in self._writers.items()]

    def _add_writer(self, pid: int, pgid: int, path: str) -> None:
        # under the lock
        self._writers[pid] = _Writer(pgid, path, time.monotonic())
        while len(self._writers) > MAX_WRITERS:
            del self._writers[next(iter(self._writers))]

    def _carried(self, pid: int, ppid: int, pgid: int) -> tuple[Verdict | None, list[int]]:
        """The verdict on an opener, and the chain (it, parent, grandparent) it looked at."""
        up = procs.family(ppid) if ppid > 1 and ppid != self._me else None
        chain = verdicts.chain(pid, ppid, up[0] if up is not None else 0, self._me)
        return self._holding(procs.open_paths(pid)) or self._recorded(chain, pgid), chain

    def _holding(self, paths: list[str]) -> Verdict | None:
        # its own descriptors: a tagged or derived file open now (cp holds its source open; a
        # derived file is not marked by this group, so its opens are not heard)
        for path in paths:
            tags = self.tags.tags_for(path)
            if tags or self.index.is_derived(path):
                prov = self.index.provenance(path) if not tags else None
                found = tuple(tags) or (tuple(prov.tags) if prov is not None else ())
                return Verdict(f"it holds {'tagged' if tags else 'derived'} file {path} open", path, found)
        return None

    def recheck(self, pid: int) -> Verdict | None:
        """After arming: did the opener's pipeline open tagged data meanwhile (as heard)? A refusal
        also forgets it as a writer."""
        who = procs.identity(pid)
        if who is None or self.exempt(who[2], who[3]):
            return None
        verdict = self._recorded([pid, who[0]], who[1])
        with self._lock:
            writer = self._writers.get(pid)
        if verdict is not None and writer is not None and self._excepted(pid, who[2], writer.path, verdict):
            return None
        if verdict is not None:
            with self._lock:
                self._writers.pop(pid, None)
        return verdict

    def _recorded(self, chain: list[int], pgid: int) -> Verdict | None:
        now = time.time()
        return self._heard(chain, pgid, now) or self._lineage(chain, now)

    def _heard(self, chain: list[int], pgid: int, now: float) -> Verdict | None:
        """A tagged open heard of the opener lately, of its parent or grandparent or group just now."""
        with self._lock:
            return self._heard_now(chain, pgid, now)

    def _heard_now(self, chain: list[int], pgid: int, now: float) -> Verdict | None:
        # under the lock
        opened = [(n, self._opened.get(member)) for n, member in enumerate(chain)]
        group = self._groups.get(pgid) if pgid > 1 else None
        for n, seen in opened:
            # an ancestor's read counts only while it is fresh (rsync's sender, a moment ago): an
            # IDE that opened a tagged file minutes ago does not taint what its terminal copies
            if seen is not None and now - seen[0] <= (RECENT_SECONDS if n == 0 else GROUP_SECONDS):
                whose = "it" if n == 0 else ("its parent" if n == 1 else "its grandparent")
                return Verdict(f"{whose} opened tagged file {seen[1]}", seen[1], seen[2])
        if group is not None and now - group[0] <= GROUP_SECONDS:
            return Verdict(f"its process group {pgid} opened tagged file {group[1]}", group[1], group[2])
        return None

    def _lineage(self, chain: list[int], now: float) -> Verdict | None:
        if self.flow is not None and self.flow.carrying():
            for n, member in enumerate(chain):
                sources = self.flow.flow([member]).since(now - (RECENT_SECONDS if n == 0 else GROUP_SECONDS))
                if sources:
                    last = sources[-1]
                    return Verdict(f"its data flow carries tagged file {last.path} (lineage, "
                                   f"{len(sources)} source(s))", last.path, last.tags)
        return None

    # ------------------------------------------------------- tagged files

    def note_tagged_open(self, pid: int, path: str) -> tuple[int, tuple[str, ...]] | None:
        """A tagged file was opened (a notification, in the order the kernel queued it, so
        before any later open of the same process or group is decided): remember it for
        RECENT_SECONDS. Returns (pgid, tags); None when the process is already gone."""
        return self._note(pid, path, self.verdicts.group_of(pid))

    def _note(self, pid: int, path: str, pgid: int, when: float = 0.0) -> tuple[int, tuple[str, ...]] | None:
        tags = tuple(self.tags.tags_for(path))
        with self._lock:
            self._note_now(pid, path, pgid, tags, when)
        return (pgid, tags) if pgid else None

    def note_heard(self, pid: int, path: str, pgid: int, when: float) -> None:
        """A tagged open the responder heard (at wall time `when`, of process group `pgid`)."""
        self._note(pid, path, pgid, when)

    def _note_now(self, pid: int, path: str, pgid: int, tags: tuple[str, ...], when: float = 0.0) -> None:
        # under the lock
        seen = (when or time.time(), path, tags)
        self._opened.pop(pid, None)
        self._opened[pid] = seen
        if pgid > 1:
            self._groups.pop(pgid, None)
            self._groups[pgid] = seen
        for table in (self._opened, self._groups):
            while len(table) > MAX_GROUPS:
                del table[next(iter(table))]

    def allow_tagged(self, pid: int, path: str) -> bool:
        """The fast path of an open of a tagged file while armed (the guard's reader thread):
        True when neither the opener nor a process of its group is remembered as writing to
        removable media, so the open may go on (noted as heard); False: decide in full."""
        pgid = self.verdicts.group_of(pid)
        if not pgid:
            return True  # gone already
        tags = tuple(self.tags.tags_for(path))
        with self._lock:  # noted and the writers looked at in one step (_writer_unless_heard)
            self._note_now(pid, path, pgid, tags)
            return not any(wpid == pid or (pgid > 1 and writer.pgid == pgid)
                           for wpid, writer in self._writers.items())

    def tagged_open(self, pid: int, path: str) -> Verdict | None:
        """An open of a tagged file while armed: refuse it when the opener writes to removable media."""
        pgid = self.verdicts.group_of(pid)
        if not pgid:
            return None  # gone already
        # remembered now, not when its notification comes: a write open of its pipeline queued
        # right after it is decided before that notification is read (an exempt user's open is
        # remembered too, as its notification would be)
        tags = tuple(self.tags.tags_for(path))
        with self._lock:  # noted and the writers looked at in one step (_writer_unless_heard)
            self._note_now(pid, path, pgid, tags)
            writers = list(self._writers.items())
        for wpid, writer in writers:
            if wpid != pid and (pgid <= 1 or writer.pgid != pgid):
                continue
            held = self._holds_removable(wpid)
            if held is None:
                with self._lock:
                    self._writers.pop(wpid, None)
                continue
            # who the opener is matters only now, for a refusal: the innocent reader of a
            # tagged tree costs one read per open
            who = procs.identity(pid)
            if who is None or self.exempt(who[2], who[3]):
                return None
            uid = who[2]
            whose = "it" if wpid == pid else f"process {wpid} of its group"
            verdict = Verdict(f"{whose} writes {held} on removable media", path, tags)
            if self._excepted(pid, uid, held, verdict):
                return None
            return verdict
        return None

    def _holds_removable(self, pid: int) -> str | None:
        for path, dev, writing in procs.open_files(pid):
            if writing and dev in self.removable_dev:
                return path
        with self._lock:
            writer = self._writers.get(pid)
        if writer is not None and time.monotonic() - writer.since < 2.0 and procs.family(pid) is not None:
            return writer.path  # its open was allowed a moment ago: the fd may not be there yet
        return None

    def writers_left(self) -> bool:
        """Whether any remembered writer still holds a file on removable media open for writing
        (forgetting those that do not): while one does, tagged trees stay armed."""
        with self._lock:
            pids = list(self._writers)
        for pid in pids:
            if self._holds_removable(pid) is None:
                with self._lock:
                    self._writers.pop(pid, None)
        with self._lock:
            return bool(self._writers)

    def sweep(self) -> None:
        """Forget what is remembered of processes that are gone (the verdicts' descriptors)."""
        self.verdicts.sweep()

    def close(self) -> None:
        """Release the descriptors held on processes."""
        self.verdicts.close()


def _ids(names: list[str], lookup: Callable[[str], int], what: str) -> set[int]:
    out = set()
    for name in names:
        try:
            out.add(lookup(name))
        except KeyError:
            log.warning("prevent.allowed_%ss: no %s %r on this host", what, what, name)
    return out
