"""ContentGuard: prevent.removable_writes = block, with fanotify permission events.

A permission group (permission.py) with a file system mark (FAN_OPEN_PERM) on every removable
mount while some process may carry tagged data ("the sticks armed"; arming.py), and
FAN_OPEN_PERM inode marks on the tagged trees while a file on removable media is open for writing
("armed"; decide.py says why) and while the sticks are not armed. Each permission event holds its
open in the kernel until it is answered. Who opened tagged data is heard through a second group,
of the notification class, with FAN_OPEN marks on the tagged trees always, and who opened files on
removable media through a third; nothing waits on them.

  responder         a child process (responder.py) reads both groups, answers the opens of
                    processes found clean from their verdicts, away from this process's
                    interpreter lock, and hands the rest over (link.py); it answers by `fail`
                    what waits longer than decision_timeout_ms, or what it read after a stall.
  reader thread     reads its messages: notes tagged opens and writers, answers an innocent
                    reader's tagged opens while armed, hands the rest to
  decision thread   asks the Decider, answers, reports `file.block` and tells the user.

Defaulted decisions are counted in an `agent.gap` (reason `prevent_timeout`). The responder dies
with the agent and the kernel allows every open still waiting: nobody hangs. One that dies alone
is replaced (`_restart`).
"""

# Per-event hot paths use os calls, not a Path object per event.

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from dataclasses import dataclass

from agent.prevent.arming import Carriers, Marks
from agent.prevent.decide import Decider, Verdict
from agent.prevent.errors import PreventError
from agent.prevent.link import Message, ResponderLink
from agent.prevent.reports import Reports
from agent.sensors import Emit, procinfo
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.lineage import DataFlow
from agent.sensors.media import RemovableMedia, RemovableMount
from agent.sensors.tags import TagMap
from common.agentconfig import PreventSettings
from protos.events import new_event

log = logging.getLogger(__name__)

GAP_REPORT_SECONDS = 5.0   # defaulted decisions are summed into one agent.gap at most this often
_IDLE_SECONDS = 0.5        # the decision thread looks whether tagged trees can be disarmed
_ARMED_CHECK_SECONDS = 0.05  # ... that often while it decides tagged opens
_CARRIERS_SECONDS = 0.1    # ... and whether every carrier is gone, while the sticks are armed
_START_SECONDS = 60.0      # a responder starting takes at most this long (a machine under load)
_RESTART_SECONDS = 1.0     # a responder that died is started again at most this often
_ROOTS_SECONDS = 1.0       # the responder is told the tagged roots when they changed, this often
_DERIVED_BYTES = 32 * 1024  # derived paths per message when a responder starts


@dataclass(slots=True)
class _Waiting:
    """An open waiting for its answer (asked by the responder)."""

    seq: int
    fd: int   # the event's descriptor number in the responder
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
        self._me = os.getpid()
        self.decider = Decider(settings, tags, index, flow, self._removable_dev)
        self.decider.device_serial = lambda path: m.device.serial if (m := media.mount_for(path)) else ""
        self.reports = Reports(media, emit)
        self.decider.on_exception = self.reports.excepted
        self._index = index
        self._flow = flow
        # the groups' marks and when they move (arming.py): the hearing group (tagged opens,
        # notification class) is not polled
        self.marks = Marks(tags, self._removable_dev)
        self.carriers = Carriers(self._me, flow, self._carries)
        self._link: ResponderLink | None = None
        self._linked = threading.Event()  # the first responder started (or could not be)
        self._roots: dict[str, tuple[str, ...]] = {}  # as the responder was last told
        self._synced = 0
        self._syncs = 0
        self._sync_cond = threading.Condition()
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiting] = {}  # responder's seq -> the open waiting on it
        self._work: queue.Queue[_Waiting | None] = queue.Queue()
        self._stop_r, self._stop_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._disarming = False  # the sticks' marks are being taken off (arming.py)
        self._arming_lock = threading.Lock()  # held while they are, and while carriers are handed over
        self._disarm_checked = 0.0
        self._swept = 0.0
        self.overflows = 0
        self._defaulted = 0          # decisions answered by `fail`, not yet reported
        self._gap_at = 0.0
        self.decided = 0
        self.fast = 0   # of those, answered without the decision thread (verdict, read, innocent reader)
        self.fast_tagged = 0  # of those, an innocent reader's tagged opens answered by the responder
        self.blocked = 0
        self.armings = 0  # times the tagged trees were armed
        self.stick_armings = 0  # times the sticks were armed (a carrier while none was)
        self.latencies: list[float] = []   # seconds from read to answer, last 10,000 (bench)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the permission group, run the threads, mark removable mounts as they come."""
        self.marks.open_groups()
        self.decider.remember = self._remember
        self.decider.on_writer = lambda pid, pgid: self._send(["writer", pid, pgid])  # before its answer
        if self._flow is not None:
            self._flow.on_version.append(self._version_changed)
        self._threads = [
            threading.Thread(target=self._read_loop, name="exfilguard-prevent-read", daemon=True),
            threading.Thread(target=self._decide_loop, name="exfilguard-prevent-decide", daemon=True),
        ]
        self.marks.mark_tagged()
        self.carriers.scan()  # those holding tagged data now; earlier readers are not known
        for thread in self._threads:
            thread.start()
        # the reader thread starts the responder: it dies with the thread that started it
        self._linked.wait(30)
        # and it runs: it reads the groups from now on (starting Python takes a while)
        if self._link is None or not self._sync(self.marks.trees, _START_SECONDS):
            self.stop()
            raise PreventError("the content guard's responder process did not start", 0)
        self.media.subscribe(self._mount_changed)

    def stop(self) -> None:
        """Close the group (the kernel allows every waiting open), stop the threads; idempotent."""
        if not self._threads:
            return
        os.write(self._stop_w, b"x")
        self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        with self._lock:
            self._waiting = {}
            responder, self._link = self._link, None
        if responder is not None:
            responder.close()  # it allows every open it still holds
        self.marks.close_groups()
        for told, listeners in ((self._derived_changed, self._index.on_derived),
                                (self._version_changed, self._flow.on_version if self._flow else [])):
            with contextlib.suppress(ValueError):
                listeners.remove(told)  # type: ignore[arg-type]
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
                f"p99_ms={pct(0.99):.3f} overflows={self.overflows} armings={self.armings} "
                f"stick_armings={self.stick_armings}")

    def tagged_marked(self) -> list[str]:
        """Tagged directories (and files) whose opens the guard hears now."""
        return list(self.marks.marked)

    def watching(self) -> list[str]:
        """Mount points of the removable file systems guarded now."""
        return sorted(self._removable_dev.values())

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        if self.marks.group is None:
            return
        if appeared:
            inside = mount.mount.fs_type.startswith("fuse.")  # a GVfs share's directory
            # marked while the sticks are armed; else the tagged trees are (arming.py)
            dev = self.marks.add_medium(mount.point, inside=inside)
            if dev >= 0:
                self._send(["devs", self._media()])
                log.info("prevent: guarding writes to %s (%s)", mount.point,
                         mount.device.serial or mount.device.name)
            return
        if self.marks.remove_medium(mount.point):
            self._send(["devs", self._media()])

    def _media(self) -> list[list[int | str]]:
        """[device number, mount point] of each removable file system (the responder marks them)."""
        return [[dev, point] for dev, point in list(self._removable_dev.items())]

    # ---------------------------------------------------------------- reader

    def _read_loop(self) -> None:
        responder = self._start_responder()
        self._linked.set()
        tick = max(0.01, min(0.1, self._timeout / 4))
        roots_at = time.monotonic()
        while True:
            if responder is None:  # it died, or could not be started: try again in a while
                if select.select([self._stop_r], [], [], _RESTART_SECONDS)[0]:
                    return
                responder = self._restart(None)
                continue
            poller = select.poll()
            poller.register(responder.fd, select.POLLIN)
            poller.register(self._stop_r, select.POLLIN)
            while True:
                ready = poller.poll(tick * 1000)
                if any(fd == self._stop_r for fd, _ in ready):
                    return
                try:
                    messages = responder.receive()
                    if messages is None or responder.lost:
                        break
                    for message in messages:
                        self._message(message)
                    if time.monotonic() - roots_at >= _ROOTS_SECONDS:
                        roots_at = time.monotonic()
                        self._send_roots()
                    self._report_defaulted()
                except Exception:  # the reader must not die: every open on the stick would wait
                    log.exception("prevent: a message of the responder could not be handled")
            responder = self._restart(responder)

    def _start_responder(self) -> ResponderLink | None:
        group, hearing, openers = self.marks.group, self.marks.hearing, self.marks.openers
        if group is None or hearing is None or openers is None:
            return None
        try:
            fds = {"group": group.fd, "hearing": hearing.fd, "openers": openers.fd}
            responder = ResponderLink({**fds, "agent": self._me, "timeout": self._timeout,
                                       "allow_on_fail": self._allow_on_fail}, tuple(fds.values()))
        except Exception:
            log.exception("prevent: the responder process could not be started")
            return None
        responder.set_version(self._flow.version if self._flow is not None else -1)
        with self._lock:
            self._link = responder
        self._send(["writers", self.decider.writer_groups()])  # those noted from now on are told as noted
        self._roots = {}
        self._send_roots()
        with contextlib.suppress(ValueError):
            self._index.on_derived.remove(self._derived_changed)
        derived: list[str] = []
        for path in [*self._index.watch_derived(self._derived_changed), ""]:
            if path:
                self.marks.mark_derived(path)  # asked always: its opener carries tagged data
            if derived and (not path or sum(map(len, derived)) > _DERIVED_BYTES):
                self._send(["derived", derived])
                derived = []
            if path:
                derived.append(path)
        with self._sync_cond:
            self._syncs += 1
            count = self._syncs
        self._send(["devs", self._media()], ["sticks", self.marks.sticks], ["sync", count, self.marks.trees])
        return responder

    def _restart(self, lost: ResponderLink | None) -> ResponderLink | None:
        """The responder died (killed, or a bug): what it asked the agent is answered by `fail`,
        what it read and held besides is allowed by the kernel as the groups close; then the
        groups are made anew, marked as before, and another responder reads them."""
        if lost is not None:
            lost.close()
            log.error("prevent: the responder process ended (exit %s); starting another",
                      lost.proc.returncode)
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            self._link = None
        with self.marks.lock:
            for item in waiting.values():  # the kernel matches an answer by the fd's number
                if self.marks.group is not None:
                    self.marks.group.respond(item.fd, self._allow_on_fail)
            with self._lock:
                self._defaulted += len(waiting)
            self.marks.close_groups()
            try:
                self.marks.open_groups()
                self.marks.remark_media()  # armed again: what the lost responder heard is not known
                self.marks.derived.clear()  # told again as the responder starts
                self.marks.derived_asked = False
                self.marks.mark_tagged()
            except Exception:
                log.exception("prevent: the permission groups could not be made anew")
                self.marks.close_groups()
                return None
        return self._start_responder()

    def _send(self, *messages: Message) -> None:
        responder = self._link
        if responder is not None:
            responder.send(*messages)

    def _send_roots(self) -> None:
        roots = self.tags.roots()
        if roots != self._roots:
            self._roots = roots
            self._send(["roots", roots])

    def _remember(self, pid: int, ppid: int, pgid: int, chain: list[int], version: int) -> None:
        """A clean verdict: the responder answers the process's later opens (before this open's
        answer is sent, on the same socket)."""
        self._send(["clean", pid, ppid, pgid, chain, version])

    def _derived_changed(self, path: str) -> None:
        self.marks.mark_derived(path)
        self._send(["derived", [path]])

    def _carries(self, paths: list[str]) -> bool:
        """Whether any of these open files is tagged or derived (a carrier holding data open)."""
        return any(self.tags.tags_for(path) or self._index.is_derived(path) for path in paths)

    def _version_changed(self, version: int) -> None:
        responder = self._link
        if responder is not None:
            responder.set_version(version)

    def _message(self, message: Message) -> None:
        kind: str = message[0]
        if kind == "heard":
            _, pid, pgid, path, when = message
            self.decider.note_heard(pid, path, pgid, when)
            self.carriers.note(pid, pgid, when)
        elif kind == "ask":
            self._asked(*message[1:])
        elif kind == "fast":  # answered from verdicts: their latencies, and the writers
            _, latencies, writers, tagged = message
            self.fast += len(latencies)
            self.fast_tagged += tagged
            self.decided += len(latencies)
            self.latencies.extend(latencies)
            for pid, pgid, path in writers:
                self.decider.note_writer(pid, pgid, path)
        elif kind == "armed":  # the responder marked the sticks: a carrier while they were not
            with self.marks.lock:
                self.marks.sticks = True
                # and nothing writes to removable media (it answers no write from verdicts): the
                # tagged trees are heard only from now on, as after a disarming (an innocent
                # reader's every open waited for an answer until the decision thread did it)
                quiet = bool(message[1]) and not self.decider.writers_left()
                if quiet:
                    self.marks.disarm_trees()
            if message[1] and not quiet:
                self._send(["sync", 0, True])  # a writer here: it answers from verdicts again
            self.stick_armings += 1
        elif kind == "disarmed":  # the responder took the sticks' marks off (_maybe_unarm)
            with self.marks.lock:
                self.marks.sticks = False
        elif kind == "defaulted":
            with self._lock:
                self._defaulted += message[1]
        elif kind == "synced":
            with self._sync_cond:
                self._synced = max(self._synced, message[1])
                self._sync_cond.notify_all()
        elif kind == "overflow":
            self.overflows += 1

    def _asked(self, seq: int, fd: int, pid: int, path: str, dev: int, size: int, read_at: float) -> None:  # noqa: PLR0917
        """An open the responder hands over: a tagged file's by an innocent reader while armed
        is answered here, the rest goes to the decision thread."""
        removable = dev in self._removable_dev
        if (not removable and self.marks.trees and self.marks.sticks and not self._disarming
                and self._known(pid, path)):
            self.carriers.note(pid)  # before the disarming's second look (it syncs first)
            self._send(["answer", seq, True])
            self.fast += 1
            self._count(read_at)
            return
        item = _Waiting(seq, fd, pid, path, removable, size, read_at)
        with self._lock:
            self._waiting[seq] = item
        self._work.put(item)

    def _known(self, pid: int, path: str) -> bool:
        try:
            return self.decider.allow_tagged(pid, path)
        except Exception:  # the open must still be answered: by the full decision
            log.exception("prevent: the tagged open of %d could not be checked", pid)
            return False

    def _sync(self, armed: bool, wait: float = 0.0, *, disarm: bool = False, arm: bool = False) -> bool:
        """Tell the responder whether it may answer from verdicts, and wait until it has read the
        tagged opens queued so far and its messages before are handled (False: it did not say).
        `disarm`: it also takes the sticks' marks off, unless a tagged open came since the last
        sync (it says "disarmed" first when it did); `arm`: it marks them (and says "armed")."""
        with self._sync_cond:
            self._syncs += 1
            count = self._syncs
        responder = self._link
        kind = "disarm" if disarm else "arm" if arm else "sync"
        if responder is None or not responder.send([kind, count, armed]):
            return False
        with self._sync_cond:
            return self._sync_cond.wait_for(lambda: self._synced >= count,
                                            wait or max(1.0, 2 * self._timeout))

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
            # armed, it wakes often even when the reader answers everything (a copy from the
            # cache, an innocent reader's tagged opens): the writers' end is seen within 50 ms,
            # the carriers' within 100 ms
            every = (_ARMED_CHECK_SECONDS if self.marks.trees and self.marks.sticks
                     else _CARRIERS_SECONDS if self.marks.sticks else _IDLE_SECONDS)
            try:
                item = self._work.get(timeout=every if self._disarm_checked else 0.001)
                idle = False
            except queue.Empty:
                item, idle = None, True
            # while armed, every tagged open waits for an answer: look often whether the writers
            # are gone (an innocent reader right after a copy would otherwise pay for 0.5 s)
            now = time.monotonic()
            if now - self._disarm_checked >= every:
                self._disarm_checked = now
                try:
                    self._maybe_disarm()  # also while busy: an innocent reader keeps it busy
                    self._maybe_unarm()
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
            if self._waiting.get(item.seq) is not item:
                return  # answered by the timeout already
        if item.removable:
            verdict = self.decider.removable_open(item.pid, item.path)
            # an allowed write arms (a read from the stick does not: a file manager, an indexer
            # or another program hashing the stick would keep every tagged read waiting)
            if verdict is None and not self.marks.trees and self.decider.is_writer(item.pid):
                self._arm()  # before the open goes on: its next tagged open must be seen
                # tagged opens made while the marks went in were heard, not asked: the responder
                # hears them all and they are noted before it says so (it answers from verdicts
                # from now on), then look again
                self._sync(True)
                verdict = self.decider.recheck(item.pid)
        else:
            verdict = self._tagged(item)
        info = procinfo.read_proc(item.pid) if verdict is not None else None  # before it exits
        if self._answer(item, verdict is None) and verdict is not None:
            self.blocked += 1
            self.reports.blocked(item.path, item.size, item.removable, item.pid, verdict, info)

    def _answer(self, item: _Waiting, allow: bool) -> bool:
        with self._lock:
            if self._waiting.get(item.seq) is not item:
                return False
            del self._waiting[item.seq]
            responder = self._link
        if responder is None or not responder.send(["answer", item.seq, allow]):
            return False
        self._count(item.read_at)
        return True

    def _count(self, read_at: float) -> None:
        self.decided += 1
        self.latencies.append(time.monotonic() - read_at)
        if len(self.latencies) > 10_000:
            del self.latencies[:5_000]

    # ----------------------------------------------------------------- arming

    def mark_dir(self, path: str) -> None:
        """A directory appeared in a tagged tree (the file sensor saw it): hear its opens too."""
        self.marks.mark_dir(path)

    def _arm(self) -> None:
        self.marks.arm_trees()
        self.armings += 1
        log.debug("prevent: armed %d tagged directories", len(self.marks.marked))

    def _maybe_disarm(self) -> None:
        # the tagged trees stay asked while the sticks are not (arming.py)
        if (not self.marks.trees or not self.marks.sticks or self.marks.group is None
                or self.decider.writers_left()):
            return
        # the responder answers no write from a verdict from now on, and every one it did is
        # noted (its message comes before its answer to this): a writer since keeps the trees armed
        if not self._sync(False) or self.decider.writers_left():
            self._send(["sync", 0, True])
            return
        self.marks.disarm_trees()
        log.debug("prevent: disarmed tagged trees (nothing open for writing on removable media)")

    def _tagged(self, item: _Waiting) -> Verdict | None:
        """A tagged or derived file's open (the responder armed the sticks before it asked, and told
        the writers it found): decided as any, and its process, allowed, is a carrier."""
        verdict = self.decider.tagged_open(item.pid, item.path)
        if verdict is None:
            self.carriers.note(item.pid)
        return verdict

    def adopt(self, previous: ContentGuard) -> None:
        """A rebuild of the sensors: the previous guard's carriers are this one's too, and the sticks
        are armed for them (if this one disarmed them meanwhile) before the previous guard stops."""
        with self._arming_lock:
            self.carriers.adopt(previous.carriers)
            if not self.marks.sticks and self.carriers.alive():
                self._sync(self.marks.trees, arm=True)

    def _maybe_unarm(self) -> None:
        """No carrier lives: ask the tagged trees, let the responder hand over what it heard or
        answered meanwhile, and take the sticks' marks off only if still none lives."""
        if self.marks.sticks and self.marks.derived_asked:
            with self._arming_lock:
                self.marks.ask_derived(False)  # asked only while the sticks are not (arming.py)
        if not self.marks.sticks or self.marks.group is None or self.carriers.alive():
            return
        with self._arming_lock:
            self._unarm()

    def _unarm(self) -> None:
        self._disarming = True  # the reader thread answers no tagged open itself from now on
        try:
            if not self.marks.trees:
                self.marks.arm_trees()
            self.marks.ask_derived(True)
            # what the responder heard or answered before is noted before its reply (it answers
            # no write from verdicts from now on); a tagged open after it stops the disarming
            if not self._sync(False) or self.carriers.alive():
                self._send(["sync", 0, True])
                return
            # it takes the marks off unless it heard or was asked of a tagged open since (that
            # process is a carrier): it is the one that marks them again, at the next such open
            if not self._sync(False, disarm=True) or self.marks.sticks:
                self._send(["sync", 0, True])
                return
        finally:
            self._disarming = False
        log.debug("prevent: disarmed the sticks (no process carries tagged data)")
