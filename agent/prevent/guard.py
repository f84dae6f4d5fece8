"""ContentGuard: prevent.removable_writes = block, with fanotify permission events.

A permission group (permission.py) with a file system mark (FAN_OPEN_PERM) on every removable
mount, and FAN_OPEN_PERM inode marks on the tagged trees while a file on removable media is open
for writing ("armed"; decide.py says why). Each permission event holds its open in the kernel
until the guard answers. Who opened tagged data is heard through a second group, of the
notification class, with FAN_OPEN marks on the tagged trees always; nothing waits on it: it is
read before each read of permission events (every tagged open made before an open on the stick
is queued there by then, so it is noted before that open is decided) and at each tick of the
reader. An innocent reader of tagged files wakes no thread of the agent.

  reader thread     reads events; answers the agent's own opens at once; hands the rest, with
                    the path read from the event's fd, to the decision thread; answers with
                    the `fail` default every event waiting longer than decision_timeout_ms,
                    and every event read right after the agent itself stood still that long
                    (SIGSTOP, a frozen machine): those waited an unknown time.
  decision thread   asks the Decider, answers, reports `file.block` and tells the user.

Defaulted decisions are counted in an `agent.gap` (reason `prevent_timeout`). Closing the group
(stop, or the agent killed) makes the kernel allow every open still waiting: nobody hangs.
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH113, PTH116, PTH119

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import sys
import threading
import time
from dataclasses import dataclass

from agent.prevent import syscalls
from agent.prevent.decide import Decider, Verdict
from agent.prevent.notify import tell_user
from agent.prevent.permission import (
    FAN_EVENT_ON_CHILD,
    FAN_OPEN,
    FAN_OPEN_PERM,
    FAN_Q_OVERFLOW,
    PermissionGroup,
)
from agent.sensors import Emit, procinfo
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.lineage import DataFlow
from agent.sensors.media import RemovableMedia, RemovableMount
from agent.sensors.staging import file_fields
from agent.sensors.tags import TagMap
from common.agentconfig import PreventException, PreventSettings
from protos.events import new_event

log = logging.getLogger(__name__)

GAP_REPORT_SECONDS = 5.0   # defaulted decisions are summed into one agent.gap at most this often
TELL_USER_SECONDS = 10.0   # one notification per user per this long (tar refused 2,000 times)
_IDLE_SECONDS = 0.5        # the decision thread looks whether tagged trees can be disarmed
_ARMED_CHECK_SECONDS = 0.05  # ... that often while it decides tagged opens


@dataclass(slots=True)
class _Waiting:
    """An open waiting for its answer."""

    fd: int
    pid: int
    path: str
    removable: bool   # on a guarded removable file system (else: a tagged file)
    size: int
    read_at: float


class ContentGuard:
    """Refuses tagged data on its way to removable media (see the module docstring)."""

    name = "prevent"

    def __init__(self, settings: PreventSettings, tags: TagMap, index: FingerprintIndex,  # noqa: PLR0917
                 media: RemovableMedia, emit: Emit, flow: DataFlow | None = None) -> None:
        self.settings = settings
        self.tags = tags
        self.media = media
        self._emit = emit
        self._timeout = settings.decision_timeout_ms / 1000.0
        self._allow_on_fail = settings.fail == "open"
        self._removable_dev: dict[int, str] = {}
        self.decider = Decider(settings, tags, index, flow, self._removable_dev)
        self.decider.device_serial = lambda path: m.device.serial if (m := media.mount_for(path)) else ""
        self.decider.on_exception = self._excepted
        self._excepted_pids: dict[int, str] = {}  # pid -> the exception reported for it (once each)
        self._group: PermissionGroup | None = None
        self._hearing: PermissionGroup | None = None  # tagged opens, notification class, not polled
        self._me = os.getpid()
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # one pass over the group's queue at a time
        self._waiting: dict[int, _Waiting] = {}  # event fd -> the open waiting on it
        self._work: queue.Queue[_Waiting | None] = queue.Queue()
        self._stop_r, self._stop_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._armed = False
        self._disarm_checked = 0.0
        self._swept = 0.0
        self._marked: list[str] = []  # tagged directories (and files) marked
        self.overflows = 0
        self._defaulted = 0          # decisions answered by `fail`, not yet reported
        self._gap_at = 0.0
        self._told: dict[int, float] = {}
        self.decided = 0
        self.fast = 0   # of those, answered by the reader thread (a clean verdict, an innocent reader)
        self.blocked = 0
        self.armings = 0  # times the tagged trees were armed
        self.latencies: list[float] = []   # seconds from read to answer, last 10,000 (bench)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the permission group, run the threads, mark removable mounts as they come."""
        self._group = PermissionGroup()
        try:
            self._hearing = PermissionGroup(hearing=True)
        except Exception:
            self._group.close()
            self._group = None
            raise
        # an open waits for this thread: let it have the interpreter within 0.2 ms, not the 5 ms
        # a busy sensor thread may otherwise hold it. The reader wakes from poll once per open on
        # a stick and must take the lock back from the sensors hashing the very copy; everything
        # after that keeps it (syscalls.py). Measured (bench.prevention, load ~7): block/monitor
        # copy time ~2.9x at 1 ms, ~1.5-1.8x at 0.2 ms; the cost is more switching between the
        # agent's own busy threads, only while several are busy.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0002))
        self._threads = [
            threading.Thread(target=self._read_loop, name="exfilguard-prevent-read", daemon=True),
            threading.Thread(target=self._decide_loop, name="exfilguard-prevent-decide", daemon=True),
        ]
        self._mark_tagged(armed=False)
        for thread in self._threads:
            thread.start()
        self.media.subscribe(self._mount_changed)

    def stop(self) -> None:
        """Close the group (the kernel allows every waiting open), stop the threads; idempotent."""
        if self._group is None:
            return
        os.write(self._stop_w, b"x")
        self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            group, self._group = self._group, None
        for item in waiting.values():
            group.answer(item.fd, True)
        group.close()
        if self._hearing is not None:
            self._hearing.close()
            self._hearing = None
        self.decider.close()
        self._report_defaulted(force=True)
        log.info("prevent: stopped: %s", self.summary())
        os.close(self._stop_r)
        os.close(self._stop_w)

    def summary(self) -> str:
        """Decisions, refusals and answer latency (read to answer) so far, for the journal."""
        ordered = sorted(self.latencies)

        def pct(share: float) -> float:
            if not ordered:
                return 0.0
            return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] * 1000

        return (f"decisions={self.decided} fast={self.fast} blocked={self.blocked} p50_ms={pct(0.5):.3f} "
                f"p99_ms={pct(0.99):.3f} overflows={self.overflows} armings={self.armings}")

    def tagged_marked(self) -> list[str]:
        """Tagged directories (and files) whose opens the guard hears now."""
        return list(self._marked)

    def watching(self) -> list[str]:
        """Mount points of the removable file systems guarded now."""
        return sorted(self._removable_dev.values())

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        group = self._group
        if group is None:
            return
        try:
            dev = os.stat(mount.point).st_dev
        except OSError:
            dev = -1
        if appeared:
            if group.place(mount.point, FAN_OPEN_PERM, filesystem=True):
                if dev >= 0:
                    self._removable_dev[dev] = mount.point
                log.info("prevent: guarding writes to %s (%s)", mount.point,
                         mount.device.serial or mount.device.name)
            return
        for known, point in list(self._removable_dev.items()):
            if point == mount.point:
                del self._removable_dev[known]
        with contextlib.suppress(Exception):
            group.place(mount.point, FAN_OPEN_PERM, filesystem=True, remove=True)

    # ---------------------------------------------------------------- reader

    def _read_loop(self) -> None:
        group = self._group
        assert group is not None
        poller = select.poll()
        poller.register(group.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        tick = max(0.01, min(0.1, self._timeout / 4))
        last = time.monotonic()
        while True:
            ready = poller.poll(tick * 1000)
            now = time.monotonic()
            stalled = now - last > self._timeout  # the whole agent stood still (SIGSTOP, freeze)
            last = now
            if any(fd == self._stop_r for fd, _ in ready):
                return
            try:
                with self._drain_lock:
                    self._drain(group, now, stalled)
                self._expire(group, now)
                self._report_defaulted()
            except Exception:  # the reader must not die: every open on the stick would wait
                log.exception("prevent: permission event handling failed")

    def _drain(self, group: PermissionGroup, now: float, stalled: bool) -> None:
        while True:
            batch = group.read()
            # every tagged open made before these opens were asked is in the hearing group's
            # queue by now: noted before any of them is decided
            self._hear()
            if not batch:
                return
            for mask, fd, pid in batch:
                if mask & FAN_Q_OVERFLOW or fd < 0:
                    self.overflows += bool(mask & FAN_Q_OVERFLOW)
                elif not mask & FAN_OPEN_PERM:
                    syscalls.close(fd)  # the group asks for permission events only
                else:
                    self._asked(group, now, stalled, fd, pid)

    def _hear(self) -> None:
        """Note the tagged opens queued in the hearing group. Only each process's latest counts
        (the decider keeps the latest per process and group; the kernel also merges a process's
        opens of one file while they wait), so a reader of 10,000 tagged files costs a few looks."""
        hearing = self._hearing
        if hearing is None:
            return
        heard: dict[int, int] = {}
        try:
            while True:
                batch = hearing.read()
                if not batch:
                    return
                for mask, fd, pid in batch:
                    if mask & FAN_Q_OVERFLOW or fd < 0:
                        self.overflows += bool(mask & FAN_Q_OVERFLOW)
                        continue
                    earlier = heard.pop(pid, -1)
                    if earlier >= 0:
                        syscalls.close(earlier)
                    if pid == self._me:
                        syscalls.close(fd)
                    else:
                        heard[pid] = fd
        finally:
            self._note_heard(heard)

    def _note_heard(self, heard: dict[int, int]) -> None:
        for pid, fd in heard.items():
            try:
                tagged = syscalls.readlink(f"/proc/self/fd/{fd}")
                if tagged is not None:
                    self.decider.note_tagged_open(pid, tagged)
            except Exception:  # the rest of the batch (opens waiting) must still be handled
                log.exception("prevent: a tagged open of %d could not be noted", pid)
            finally:
                syscalls.close(fd)
        heard.clear()

    def _asked(self, group: PermissionGroup, now: float, stalled: bool, fd: int, pid: int) -> None:
        """A permission event: answered here (the agent's own, a stall, a clean verdict) or
        handed to the decision thread."""
        if pid == self._me:
            group.answer(fd, True)  # the agent hashing a copy: never wait on ourselves
            return
        if stalled:
            self._default(group, fd)
            return
        path = syscalls.readlink(f"/proc/self/fd/{fd}")
        st = syscalls.device_and_size(fd)
        if path is None or st is None:
            group.answer(fd, True)
            return
        removable = st[0] in self._removable_dev
        # a process found clean before (cp -r at its 2nd..2,000th file): checked again here,
        # from descriptors held on it, and answered without a trip to the decision thread;
        # only while armed (a write now must arm the tagged trees first)
        # the same for a tagged file's open by a process that writes nothing to removable media,
        # nor does its group (an innocent reader while some copy to a stick runs)
        if self._armed and self._known(pid, path, removable):
            group.answer(fd, True)
            self.fast += 1
            self._count(now)
            return
        item = _Waiting(fd, pid, path, removable, st[1], now)
        with self._lock:
            self._waiting[fd] = item
        self._work.put(item)

    def _known(self, pid: int, path: str, removable: bool) -> bool:
        try:
            if removable:
                return self.decider.allow_known(pid, path)
            return self.decider.allow_tagged(pid, path)
        except Exception:  # the open must still be answered: by the full decision
            log.exception("prevent: the clean verdict of %d could not be checked", pid)
            return False

    def _expire(self, group: PermissionGroup, now: float) -> None:
        with self._lock:
            late = [item for item in self._waiting.values() if now - item.read_at > self._timeout]
            for item in late:
                del self._waiting[item.fd]
        for item in late:
            self._default(group, item.fd)

    def _default(self, group: PermissionGroup, fd: int) -> None:
        group.answer(fd, self._allow_on_fail)
        with self._lock:
            self._defaulted += 1

    def _report_defaulted(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            count = self._defaulted
            if not count or (not force and now - self._gap_at < GAP_REPORT_SECONDS):
                return
            self._defaulted, self._gap_at = 0, now
        outcome = "allowed" if self._allow_on_fail else "denied"
        event = new_event("agent.gap")
        event.exfilguard.gap.reason = "prevent_timeout"
        event.exfilguard.gap.lost = count
        event.event.reason = (f"{count} open(s) on guarded files {outcome} undecided (prevent.fail: "
                              f"{self.settings.fail}): the agent did not decide within "
                              f"{self.settings.decision_timeout_ms} ms")
        event.exfilguard.attribution = procinfo.NONE
        log.warning("prevent: %s", event.event.reason)
        self._emit(event)

    # -------------------------------------------------------------- decisions

    def _decide_loop(self) -> None:
        while True:
            item: _Waiting | None
            try:
                # armed, it wakes often even when the reader answers everything (a copy from the
                # cache, an innocent reader's tagged opens): the writers' end is seen within 50 ms
                item = self._work.get(timeout=_ARMED_CHECK_SECONDS if self._armed else _IDLE_SECONDS)
                idle = False
            except queue.Empty:
                item, idle = None, True
            # while armed, every tagged open waits for an answer: look often whether the writers
            # are gone (an innocent reader right after a copy would otherwise pay for 0.5 s)
            now = time.monotonic()
            if now - self._disarm_checked >= (_ARMED_CHECK_SECONDS if self._armed else _IDLE_SECONDS):
                self._disarm_checked = now
                try:
                    self._maybe_disarm()  # also while busy: an innocent reader keeps it busy
                except Exception:
                    log.exception("prevent: disarming failed")
            if idle:
                if now - self._swept >= _IDLE_SECONDS:
                    self._swept = now
                    self.decider.sweep()
                continue
            if item is None:
                return
            try:
                self._decide(item)
            except Exception:
                log.exception("prevent: deciding on %s failed", item.path)
                self._answer(item, self._allow_on_fail)

    def _decide(self, item: _Waiting) -> None:
        with self._lock:
            if self._waiting.get(item.fd) is not item:
                return  # answered by the timeout already
        if item.removable:
            verdict = self.decider.removable_open(item.pid, item.path)
            # an allowed write arms (a read from the stick does not: a file manager, an indexer
            # or another program hashing the stick would keep every tagged read waiting)
            if verdict is None and not self._armed and self.decider.is_writer(item.pid):
                self._arm()  # before the open goes on: its next tagged open must be seen
                # tagged opens made while the marks went in were heard, not asked: hear them all
                # now (the reader's pass holds the same lock), then look again
                group = self._group
                if group is not None:
                    with self._drain_lock:
                        self._drain(group, time.monotonic(), stalled=False)
                verdict = self.decider.recheck(item.pid)
        else:
            verdict = self.decider.tagged_open(item.pid, item.path)
        info = procinfo.read_proc(item.pid) if verdict is not None else None  # before it exits
        if self._answer(item, verdict is None) and verdict is not None:
            self._report(item, verdict, info)

    def _answer(self, item: _Waiting, allow: bool) -> bool:
        with self._lock:
            if self._waiting.get(item.fd) is not item:
                return False
            del self._waiting[item.fd]
            group = self._group
        if group is None:
            return False
        group.answer(item.fd, allow)
        self._count(item.read_at)
        return True

    def _count(self, read_at: float) -> None:
        self.decided += 1
        self.latencies.append(time.monotonic() - read_at)
        if len(self.latencies) > 10_000:
            del self.latencies[:5_000]

    def _report(self, item: _Waiting, verdict: Verdict, info: procinfo.ProcessInfo | None) -> None:
        self.blocked += 1
        event = new_event("file.block", tags=list(verdict.tags), file=file_fields(item.path, item.size))
        mount = self.media.mount_for(item.path) if item.removable else None
        if mount is None and not item.removable:
            # the tagged file was refused: name the stick its process writes to
            mount = next(iter(self.media.mounts()), None) if len(self.media.mounts()) == 1 else None
        if mount is not None:
            event.device.CopyFrom(mount.device)
        event.exfilguard.source.path = verdict.source
        event.exfilguard.source.tags.extend(verdict.tags)
        what = "write to removable media" if item.removable else "read of tagged file"
        event.event.reason = f"blocked {what} {item.path}: {verdict.why} (prevent.removable_writes: block)"
        procinfo.describe(event, info, procinfo.EXACT, item.pid)
        self._emit(event)
        uid = info.uid if info is not None else -1
        now = time.monotonic()
        if now - self._told.get(uid, -TELL_USER_SECONDS) >= TELL_USER_SECONDS:
            self._told[uid] = now
            tell_user(uid, "ExfilGuard blocked a copy to removable media",
                      f"{os.path.basename(verdict.source)}: {event.event.reason}")
        else:
            log.info("prevent: %s", event.event.reason)

    def _excepted(self, pid: int, path: str, grant: PreventException, verdict: Verdict) -> None:
        """A grant let an open go that would have been refused: `file.allow`, once per process,
        naming the grant, who granted it and why (the trail shows it used)."""
        key = f"{grant.id}|{grant.user}|{grant.device}|{grant.until.isoformat()}"
        if self._excepted_pids.get(pid) == key:
            return
        self._excepted_pids[pid] = key
        while len(self._excepted_pids) > 4096:
            del self._excepted_pids[next(iter(self._excepted_pids))]
        event = new_event("file.allow", tags=list(verdict.tags), file=file_fields(path, 0))
        if (mount := self.media.mount_for(path)) is not None:
            event.device.CopyFrom(mount.device)
        event.exfilguard.source.path = verdict.source
        event.exfilguard.source.tags.extend(verdict.tags)
        event.event.reason = (f"allowed by grant {grant.id} (granted by {grant.granted_by}: "
                              f"{grant.note or 'no note'}) for {grant.user}"
                              f"{' on device ' + grant.device if grant.device else ''} until "
                              f"{grant.until.isoformat()}; without it: {verdict.why}")
        procinfo.describe(event, procinfo.read_proc(pid), procinfo.EXACT, pid)
        self._emit(event)

    # ----------------------------------------------------------------- arming

    def _mark_tagged(self, *, armed: bool) -> None:
        """Mark every directory (and tagged file) of the tagged trees, as they are now: heard
        always, asked too when armed."""
        marked = []
        for root in self.tags.top_roots():
            if os.path.isfile(root):
                if self._place_tagged(root, 0, armed=armed):
                    marked.append(root)
                continue
            for dirpath, _dirs, _files in os.walk(root):
                if self._place_tagged(dirpath, FAN_EVENT_ON_CHILD, armed=armed):
                    marked.append(dirpath)
        self._marked = marked

    def _place_tagged(self, path: str, child: int, *, armed: bool) -> bool:
        group, hearing = self._group, self._hearing
        if group is None or hearing is None or not hearing.place(path, FAN_OPEN | child):
            return False
        return not armed or group.place(path, FAN_OPEN_PERM | child)

    def mark_dir(self, path: str) -> None:
        """A directory appeared in a tagged tree (the file sensor saw it): hear its opens too."""
        with contextlib.suppress(Exception):
            if self._place_tagged(path, FAN_EVENT_ON_CHILD, armed=self._armed):
                self._marked.append(path)

    def _arm(self) -> None:
        self._mark_tagged(armed=True)
        self._armed = True
        self.armings += 1
        log.debug("prevent: armed %d tagged directories", len(self._marked))

    def _maybe_disarm(self) -> None:
        group = self._group
        if not self._armed or group is None or self.decider.writers_left():
            return
        for path in self._marked:
            with contextlib.suppress(Exception):
                group.place(path, FAN_OPEN_PERM, remove=True)
        self._armed = False
        log.debug("prevent: disarmed tagged trees (nothing open for writing on removable media)")
