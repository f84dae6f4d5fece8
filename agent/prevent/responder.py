"""The content guard's responder: a child process that reads the permission group and answers
the opens of processes already found clean, without the agent's interpreter lock.

    python -m agent.prevent.responder CONFIG-JSON      (started by link.ResponderLink only)

`cp -r` of 2,000 files asks 2,000 times; answered by a thread of the agent, each answer waited
for that thread to get the interpreter lock back from the sensor threads hashing the very copy
(~0.3 ms per open; a thread of a process of its own: ~0.03 ms). So this process, single-threaded,
owns the reading of the permission group:

  - an open on removable media by a process the agent found clean (a "clean" message: its
    verdict, with the chain and lineage version it rests on) is checked again here, from
    descriptors held on the process, exactly as `Decider.allow_known` does, and allowed; the
    agent is told afterwards (a writer, counted). Only while the agent has armed it (`sync`).
  - while armed, a tagged file's open by a process that writes nothing to removable media, nor
    any of its group (the writers: those answered here, and those the agent tells as it notes
    them), is answered here too, when no open on removable media of either waits for the agent;
  - a tagged or derived file's open while the sticks are unarmed: the removable mounts are
    marked first, then it is answered here unless the opener or its group holds a file there
    open for writing (arming.py); the sticks' marks are this process's to place and take off;
  - an open on removable media for reading (its flags read from /proc, as the agent would) is
    allowed here, armed or not: a read takes nothing away, and arms nothing;
  - everything else is handed to the agent (`ask`) and answered when the agent says (`answer`),
    or by `prevent.fail` when it does not within decision_timeout_ms (the agent stopped or
    stalled), or when this process itself stood still that long.
  - the hearing group (tagged opens, notification class) is read here, before each read of
    permission events: the tagged opens are noted in this process's tables (a cached verdict is
    checked against them) and sent to the agent before any open read after them.

It dies with the agent (PR_SET_PDEATHSIG, and the end of the socket); the kernel then allows
every open it still holds (the group's last descriptor closes).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from agent.prevent import arming, link, procs, syscalls, verdicts
from agent.prevent.decide import MAX_WRITERS, Decider, Verdict
from agent.prevent.permission import FAN_OPEN_PERM, FAN_Q_OVERFLOW, PermissionGroup
from agent.sensors.fingerprints import MAX_DERIVED
from agent.sensors.provenance import Provenance
from agent.sensors.tags import TagMap
from common import logs
from common.agentconfig import PreventSettings

log = logging.getLogger("agent.prevent.responder")

_PR_SET_PDEATHSIG = 1
MAX_BACKLOG = 4096  # packets kept for an agent that reads none (stopped): the oldest go
MAX_STICK_OPENERS = 4096  # processes heard opening files on removable media (the oldest go)
# a cached write is told to the agent (which keeps its writers) at most this often per process:
# the agent counts a writer allowed within 2 s as writing even before its descriptor shows
WRITER_NOTE_SECONDS = 0.5
# the cached answers are told in one message at most this often (unless something else goes):
# a message wakes the agent, which then competes with the copy for the CPU (a send per answer
# took ~0.1 ms of the responder's time, as long as the rest of the answer)
FAST_NOTE_SECONDS = 0.1


class _Derived:
    """The derived files the agent's fingerprint index knows (told by `derived` messages)."""

    def __init__(self) -> None:
        self.paths: dict[str, None] = {}  # oldest first, as many as the index keeps

    def add(self, paths: list[str]) -> None:
        """Derived files the index added (one it forgot stays here until pushed out: a file
        taken for derived sends its opener's writes to the agent, which knows better)."""
        for path in paths:
            self.paths.pop(path, None)
            self.paths[path] = None
        while len(self.paths) > MAX_DERIVED:
            del self.paths[next(iter(self.paths))]

    def is_derived(self, path: str) -> bool:
        """Whether `path` is derived from tagged data."""
        return path in self.paths

    def provenance(self, _path: str) -> Provenance | None:
        """Not known here (a refusal is the agent's to explain)."""
        return None


class _CachedDecider(Decider):
    """The decider's cached check, with lineage read from the page the agent shares: a new
    version sends the open to the agent (lineage lives there)."""

    def __init__(self, tags: TagMap, derived: _Derived, page: mmap.mmap, agent: int) -> None:
        super().__init__(PreventSettings(), tags, derived, None, {})
        self._page = page
        # the chains the agent's verdicts walked stop at the agent, not at this process
        self._me = agent
        self.verdicts = verdicts.VerdictCache(agent)

    def flow_version(self) -> int | None:
        """DataFlow.version as the agent last published it (None: the agent has no lineage)."""
        version: int = link.VERSION.unpack_from(self._page, 0)[0]
        return None if version < 0 else version

    def _lineage(self, chain: list[int], now: float) -> Verdict | None:
        return Verdict("lineage changed: asked of the agent", "", ())


class Responder:
    """One permission group's reader and cached answers (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.group = PermissionGroup.adopt(config["group"])
        self.hearing = PermissionGroup.adopt(config["hearing"])
        self.openers = PermissionGroup.adopt(config["openers"])  # who opens files on removable media
        self.link = socket.socket(fileno=config["link"])
        self.link.setblocking(False)
        self.page = mmap.mmap(config["page"], link.VERSION.size, prot=mmap.PROT_READ)
        self.agent = int(config["agent"])
        self.timeout = float(config["timeout"])
        self.allow_on_fail = bool(config["allow_on_fail"])
        self.derived = _Derived()
        self.decider = _CachedDecider(TagMap({}), self.derived, self.page, self.agent)
        # every process known to write to removable media (pid -> pgid): the agent's writers (told
        # as it notes them, before their answers) and those answered here; a tagged open of one,
        # or of its group, goes to the agent, any other is answered here while armed
        self.writers_seen: dict[int, int] = {}
        self.decider.on_writer = self._writer
        # seq -> (pid, pgid) of an open on removable media asked of the agent, not answered yet
        self.removable: dict[int, tuple[int, int]] = {}
        self.fast_tagged = 0  # tagged opens answered here, not yet told
        self.tagged_devs: set[int] = set()  # st_dev of the tagged roots
        self.devs: dict[int, str] = {}  # st_dev -> mount point of each removable file system
        self.armed = False
        # whether the removable mounts carry the permission mark, as the agent last said: while
        # they do not, a tagged or derived open marks them before it is answered (arming.py)
        self.sticks = True
        self.tagged_since = False  # a tagged or derived open heard or asked since the last sync
        # pid -> None of the processes heard opening a file on removable media, whether asked or
        # not: at an arming, those holding one open for writing are the writers (arming.py)
        self.stick_openers: dict[int, None] = {}
        self.waiting: dict[int, tuple[int, float]] = {}  # seq -> (event fd, read at)
        # seq -> (pid, pgid) of a tagged file's open handed to the agent and not answered yet
        self.tagged: dict[int, tuple[int, int]] = {}
        self.seq = 0
        self.out: list[link.Message] = []
        self.fast: list[float] = []  # latencies of the cached answers not yet told
        self.writers: dict[int, link.Message] = {}  # pid -> [pid, pgid, path] not yet told
        self.told: dict[int, float] = {}  # pid -> when its latest write was told
        self.fast_told = 0.0  # when the cached answers were last told
        self.backlog: deque[bytes] = deque()

    def run(self) -> None:
        """Serve until the agent says stop or is gone; then allow what still waits."""
        poller = select.poll()
        poller.register(self.group.fd, select.POLLIN)
        linked = self.link.fileno()
        poller.register(linked, select.POLLIN)
        tick = max(0.01, min(0.1, self.timeout / 4))
        last = swept = time.monotonic()
        try:
            while True:
                ready = poller.poll(tick * 1000)
                now = time.monotonic()
                stalled = now - last > self.timeout  # this process stood still: SIGSTOP, freeze
                last = now
                # each is read when poll says it has something (or at a tick): during a copy most
                # wake-ups are one open on the stick, and a read that finds nothing is a call
                woke = [fd for fd, _ in ready]
                if (not woke or linked in woke) and not self._receive():
                    return
                if not woke or self.group.fd in woke:
                    self._drain(now, stalled)
                if not ready:
                    self._hear()  # a tick: the queue of tagged opens does not grow while idle
                self._expire(now)
                self._flush()
                if now - swept >= 1.0:
                    swept = now
                    self.decider.sweep()  # verdicts of processes that are gone
                    self._sweep_writers()
        finally:
            self.tagged.clear()
            for fd, _ in self.waiting.values():
                self.group.answer(fd, True)
            self.waiting.clear()

    # ------------------------------------------------------------- the agent

    def _receive(self) -> bool:
        messages = link.receive(self.link)
        if messages is None:
            return False
        for message in messages:
            kind = message[0]
            if kind == "answer":
                waiting = self.waiting.pop(message[1], None)
                self.tagged.pop(message[1], None)
                self.removable.pop(message[1], None)
                if waiting is not None:
                    self.group.answer(waiting[0], bool(message[2]))
            elif kind == "clean":
                _, pid, ppid, pgid, chain, version = message
                self.decider.verdicts.remember(pid, ppid, pgid, list(chain), version)
            elif kind in ("sync", "disarm", "arm"):
                self.armed = bool(message[2])
                self._hear()  # tagged opens made while the agent armed: before it decides again
                if kind == "disarm" and not self.tagged_since and self.sticks:
                    arming.mark_sticks(self.group, self.devs, remove=True)
                    self.sticks = False
                    self.out.append(["disarmed"])
                elif kind == "arm" and not self.sticks:
                    arming.mark_sticks(self.group, self.devs)
                    self.sticks = True
                    self.out.append(["armed", False])
                self.tagged_since = False
                self.told.clear()  # every writer since: told before the agent looks for writers
                self._flush(force=True)
                self.out.append(["synced", message[1]])
            elif kind == "writer":
                self._writer(message[1], message[2])
            elif kind == "writers":
                for pid, pgid in message[1]:
                    self._writer(pid, pgid)
            elif kind == "derived":
                self.derived.add(message[1])
            elif kind == "devs":
                known, self.devs = self.devs, {int(dev): str(point) for dev, point in message[1]}
                if self.sticks:  # a stick mounted while the agent looked, armed meanwhile here
                    arming.mark_sticks(self.group, {d: p for d, p in self.devs.items() if d not in known})
            elif kind == "sticks":
                self.sticks = bool(message[1])
            elif kind == "roots":
                self.decider.tags = TagMap({root: list(tags) for root, tags in message[1].items()})
                self.tagged_devs = set()
                for root in message[1]:
                    with contextlib.suppress(OSError):
                        self.tagged_devs.add(Path(root).stat().st_dev)
            elif kind == "stop":
                return False
        return True

    def _flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.fast and (force or self.out or now - self.fast_told >= FAST_NOTE_SECONDS):
            self.out.insert(0, ["fast", self.fast, list(self.writers.values()), self.fast_tagged])
            self.fast, self.writers, self.fast_told, self.fast_tagged = [], {}, now, 0
        if self.out:
            self.backlog.extend(link.packets(self.out))
            self.out = []
            while len(self.backlog) > MAX_BACKLOG:
                self.backlog.popleft()
        while self.backlog:
            try:
                self.link.send(self.backlog[0])
            except (BlockingIOError, InterruptedError):
                return  # the agent reads none now (stopped): kept for later
            self.backlog.popleft()

    # ------------------------------------------------------------- the kernel

    def _drain(self, now: float, stalled: bool) -> None:
        # one read per wake-up: what comes meanwhile wakes the next poll at once (a second read
        # here would mostly find nothing: `cp` waits for this answer before its next open)
        batch = self.group.read()
        if batch:
            # every tagged open made before these opens were asked is queued there by now
            self._hear()
            for mask, fd, pid in batch:
                if mask & FAN_Q_OVERFLOW or fd < 0:
                    if mask & FAN_Q_OVERFLOW:
                        self.out.append(["overflow"])
                elif not mask & FAN_OPEN_PERM:
                    syscalls.close(fd)
                else:
                    self._asked(fd, pid, now, stalled)

    def _hear(self) -> None:
        """Note the latest tagged open of each process queued in the hearing group, here and
        (in order, before any later open is asked) in the agent."""
        while True:
            pids = self.openers.pids()
            if not pids:
                break
            for pid in pids:
                self._opened_stick(pid)
        heard: dict[int, int] = {}
        while True:
            batch = self.hearing.read()
            if not batch:
                break
            for mask, fd, pid in batch:
                if mask & FAN_Q_OVERFLOW or fd < 0:
                    if mask & FAN_Q_OVERFLOW:
                        self.out.append(["overflow"])
                    continue
                if pid == self.agent:  # hashing what it guards: no carrier
                    syscalls.close(fd)
                    continue
                st = syscalls.device_and_size(fd)
                if st is not None and st[0] in self.devs:  # a stick heard here (no file handles)
                    syscalls.close(fd)
                    self._opened_stick(pid)
                    continue
                self.tagged_since = True
                earlier = heard.pop(pid, -1)
                if earlier >= 0:
                    syscalls.close(earlier)
                heard[pid] = fd
        when = time.time()
        for pid, fd in heard.items():
            path = syscalls.readlink(f"/proc/self/fd/{fd}")
            syscalls.close(fd)
            if path is None:
                continue
            pgid = self.decider.verdicts.group_of(pid)
            self.decider.note_heard(pid, path, pgid, when)
            self.out.append(["heard", pid, pgid, path, when])

    def _opened_stick(self, pid: int) -> None:
        self.stick_openers.pop(pid, None)
        self.stick_openers[pid] = None
        while len(self.stick_openers) > MAX_STICK_OPENERS:
            del self.stick_openers[next(iter(self.stick_openers))]

    def _asked(self, fd: int, pid: int, now: float, stalled: bool) -> None:
        if pid == self.agent:
            self.group.answer(fd, True)  # the agent hashing a copy: never wait on it
            return
        if stalled:
            self._default(fd)
            return
        st = syscalls.device_and_size(fd)
        removable = st is not None and st[0] in self.devs
        if removable and self.armed and self._cached(fd, pid, now):
            return
        path = syscalls.readlink(f"/proc/self/fd/{fd}")
        if path is None or st is None:
            self.group.answer(fd, True)
            return
        if not removable:
            self.tagged_since = True
            if not self.sticks and self._arm(fd, pid, path, now):
                return
        # only an open of a file known to be tagged: a stick whose mark went in before its device
        # was told here (`devs`) is not taken for a tagged tree
        # (while the sticks are armed: every write is asked, so every writer known here)
        if not removable and self.sticks and st[0] in self.tagged_devs and self.decider.tags.tags_of(path):
            pgid = self._innocent(pid)
            if pgid is not None:  # a tagged file's reader that writes nothing to removable media
                when = time.time()
                self.decider.note_heard(pid, path, pgid, when)  # before any later open is looked at
                self.group.answer(fd, True)
                self.fast.append(time.monotonic() - now)
                self.fast_tagged += 1
                self.out.append(["heard", pid, pgid, path, when])
                return
        if self.armed and removable and self._unrelated(pid):
            how = self._known(pid, path)
            if how:
                self.group.answer(fd, True)
                self.fast.append(time.monotonic() - now)
                clean = self.decider.verdicts.get(pid)
                if (how == "write" and clean is not None
                        and now - self.told.get(pid, -1.0) >= WRITER_NOTE_SECONDS):
                    self._told(pid, clean.pgid, path, now)
                return
        if removable and self._reads(pid, path):
            # a read from removable media takes nothing away: allowed as Decider.removable_open
            # does first, without a trip to the agent (a file manager, an indexer, a program
            # hashing the stick: each of its opens waited for the agent's decision thread)
            self.group.answer(fd, True)
            self.fast.append(time.monotonic() - now)
            return
        self.seq += 1
        self.waiting[self.seq] = (fd, now)
        if removable:
            self.removable[self.seq] = (pid, self.decider.verdicts.group_of(pid))
        else:
            self.tagged[self.seq] = (pid, self.decider.verdicts.group_of(pid))
        self.out.append(["ask", self.seq, fd, pid, path, st[0], st[1], now])

    def _arm(self, fd: int, pid: int, path: str, now: float) -> bool:
        """A tagged or derived file's open while the sticks are unarmed: mark every removable
        mount before it is answered, then look whether the opener or a process of its group holds
        a file there open for writing (opened while nothing asked; the agent is told them). None
        does: it is answered here, as an innocent reader's while armed (True). Else the agent
        decides (False)."""
        arming.mark_sticks(self.group, self.devs)
        self.sticks = True
        # who opened a file there before the marks went in (the opener's own descriptors too:
        # one opened before this process heard that stick)
        self._hear()
        try:
            found = arming.removable_writers([*self.stick_openers, pid], self.devs)
        except Exception:  # the open must still be answered: by the agent, which looks again
            log.exception("prevent responder: the writers of %d could not be read", pid)
            found = [[pid, 0, "?"]]  # taken for a writer: the agent decides
        for writer, group, _path in found:
            self._writer(int(writer), int(group))
        if found:
            self.out.append(["fast", [], found, 0])  # the agent notes them before the question
        # nothing writes to removable media: no answer from verdicts (every write goes to the
        # agent, which arms the tagged trees for it), and the agent hears the trees only
        quiet = not self.writers_seen and not self.removable
        self.armed = not quiet
        self.out.append(["armed", quiet])
        if found:
            return False
        if not (self.decider.tags.tags_of(path) or self.derived.is_derived(path)):
            return False  # not known here as tagged (a stick told late): the agent decides
        pgid = self._innocent(pid)
        if pgid is None:
            return False
        when = time.time()
        self.decider.note_heard(pid, path, pgid, when)
        self.group.answer(fd, True)
        self.fast.append(time.monotonic() - now)
        self.fast_tagged += 1
        self.out.append(["heard", pid, pgid, path, when])
        return True

    def _reads(self, pid: int, path: str) -> bool:
        """Whether the open asks only to read (procs.opens_for_writing: False); when that cannot be
        told, the agent decides."""
        try:
            return procs.opens_for_writing(pid, path) is False
        except Exception:  # the open must still be answered: by the agent
            log.exception("prevent responder: the open of %s by %d could not be read", path, pid)
            return False

    def _cached(self, fd: int, pid: int, now: float) -> bool:
        """Answer an open on removable media from the opener's clean verdict (Decider.allow_clean)
        with the fewest calls (`cp -r` of 2,000 files asks 2,000 times): the event's path is read
        only for a process of several threads or to tell the agent of the writer, the open's
        flags once (a `syscall` that says "running" made this process give its CPU away, and
        wait for the copier's wake-up). False: not answered; the longer way asks again."""
        clean = self.decider.verdicts.get(pid)
        if clean is None or not self._unrelated(pid):
            return False
        named: list[str | None] = []  # the event's path, read at most once

        def path_of() -> str | None:
            if not named:
                named.append(syscalls.readlink(f"/proc/self/fd/{fd}"))
            return named[0]

        try:
            how = self.decider.allow_clean(pid, path_of)
        except Exception:  # the open must still be answered: by the longer way
            log.exception("prevent responder: the clean verdict of %d could not be checked", pid)
            return False
        if not how:
            return False
        # the agent keeps its writers by what they write (and counts one allowed within 2 s as
        # writing): told of an open for writing, at most every WRITER_NOTE_SECONDS
        path = None
        if how != "read" and now - self.told.get(pid, -1.0) >= WRITER_NOTE_SECONDS:
            path = path_of()
            if how == "any" and path is not None and clean.handle.writing(os.fsencode(path)) is not True:
                path = None
        self.group.answer(fd, True)
        self.fast.append(time.monotonic() - now)
        if path is not None:
            self._told(pid, clean.pgid, path, now)
        return True

    def _told(self, pid: int, pgid: int, path: str, now: float) -> None:
        self.told[pid] = now
        self.writers[pid] = [pid, pgid, path]
        if len(self.told) > verdicts.MAX_CLEAN * 4:
            self.told = {p: t for p, t in self.told.items() if now - t < WRITER_NOTE_SECONDS}

    def _unrelated(self, pid: int) -> bool:
        """Whether no tagged open of this process or its group waits for the agent's answer. One
        that does goes to the agent too: the agent looks at the writers and the tagged opens in one
        step (decide.py), and this process's own writers are not among the agent's yet (a
        pipeline's write answered here while its tagged read waits there would pass both)."""
        if not self.tagged:
            return True
        clean = self.decider.verdicts.get(pid)
        pgid = clean.pgid if clean is not None else 0
        return not any(opener == pid or (group > 1 and group == pgid)
                       for opener, group in self.tagged.values())

    def _innocent(self, pid: int) -> int | None:
        """The process group of a tagged file's opener (0: gone) when this process may let the open
        go, as the agent's `Decider.allow_tagged` would: neither it nor a process of its group is
        known to write to removable media, nor has an open on removable media waiting for the agent
        (a write the agent is deciding is not among the writers yet; the agent looks at the two in
        one step). None: ask the agent."""
        if pid in self.writers_seen or len(self.writers_seen) > MAX_WRITERS:
            return None
        pgid = self.decider.verdicts.group_of(pid)
        if pgid > 1 and pgid in self.writers_seen.values():
            return None
        if any(asker == pid or (group > 1 and group == pgid) for asker, group in self.removable.values()):
            return None
        return pgid

    def _writer(self, pid: int, pgid: int) -> None:
        self.writers_seen[pid] = pgid

    def _sweep_writers(self) -> None:
        """Forget writers and openers of files on removable media that are gone (the agent forgets
        its writers too: they hold nothing open)."""
        for table in (self.writers_seen, self.stick_openers):
            for pid in list(table):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    del table[pid]
                except OSError:
                    continue

    def _known(self, pid: int, path: str) -> str:
        try:
            return self.decider.allow_known(pid, path)
        except Exception:  # the open must still be answered: by the agent
            log.exception("prevent responder: the clean verdict of %d could not be checked", pid)
            return ""

    def _expire(self, now: float) -> None:
        late = [seq for seq, (_, read_at) in self.waiting.items() if now - read_at > self.timeout]
        for seq in late:
            self.tagged.pop(seq, None)
            asked = self.removable.pop(seq, None)
            if asked is not None and self.allow_on_fail:  # a write let go undecided: a writer
                self._writer(*asked)
            self._default(self.waiting.pop(seq)[0])

    def _default(self, fd: int) -> None:
        self.group.answer(fd, self.allow_on_fail)
        self.out.append(["defaulted", 1])


def main(argv: list[str]) -> int:
    """Run the responder the agent started (argv[1]: its configuration as JSON)."""
    config = json.loads(argv[1])
    # die with the agent's thread that started this process (the guard's reader)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(config["agent"]):
        return 0  # the agent died before the line above: nothing to answer for
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the agent says when: ["stop"] or its end
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure("warning")  # JSON lines on the agent's stdout, as its own
    syscalls.use_os()  # one thread: no interpreter lock to keep, and os calls cost less than ctypes'
    Responder(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
