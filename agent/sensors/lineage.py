"""DataFlow: tagged data followed from the processes that read it to the files they write.

A process that opens a tagged file (or a file derived from one) carries that data. It flows
  - through pipes, from the processes holding a pipe's write end to those holding its read
    end (by pipe inode, as /proc/PID/fd shows `pipe:[N]`, the end from /proc/PID/fdinfo);
    a named pipe (`mkfifo`: /proc/PID/fd shows its path) by its device and inode;
  - through socketpairs (rsync's sender and receiver, sshd and its session), both ways,
    between the processes holding either end (sockets.py);
  - from parent to child (fork/exec): `tar czf` reads, the gzip it forked writes.
Process groups and sessions are not links of their own: a shell pipeline is linked by its
pipes, and a non-interactive shell puts everything it runs in one group.

Who holds which pipe is recorded while the process lives: at every exec (fanotify
FAN_OPEN_EXEC), at a tagged read, at a write on removable media and at a close-after-write.
The flow of a writer is then computed from those records, so a short-lived `cat` or `gzip`
that has exited by the time its write is handled is still linked. All tables are bounded;
what a bound drops is counted in `dropped` (reported as an agent.gap by the caller).
"""

# Per-event hot paths use os calls, not a Path object per event.
# ruff: noqa: PTH115, PTH116, PTH118, PTH123, PTH208

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from stat import S_ISFIFO

from agent.sensors import procinfo
from agent.sensors.sockets import SocketPairs

MAX_PROCESSES = 8192       # processes with a recorded link or carried data (oldest forgotten)
MAX_SOURCES = 10_000       # tagged files remembered per carrying process
MAX_WRITTEN = 4096         # files on removable media with writers not yet handled
MAX_VISIT = 64             # processes looked at for one writer's flow
ANCESTOR_GENERATIONS = 2   # parent and grandparent hand their data to a child
CARRY_SECONDS = 12 * 3600.0
REFRESH_SECONDS = 1.0      # a process's pipes are re-read at most this often
FORK_SLACK_SECONDS = 0.5   # a parent's reads this soon after a child's start still reach it
_O_ACCMODE = 0o3
_CMDLINE_BYTES = 8192
_MAX_ARGS = 64
MAX_SOCKETS = 32           # sockets of one process asked about per look (a browser has hundreds)
MAX_CHILDREN = 16          # children recorded when a process first reads tagged data
MAX_FILES = 16             # paths of open files kept per process record
# A named pipe's key among the pipe inodes: pipefs numbers its inodes from 1 up (32 bits), a
# FIFO's (device, inode) is hashed above 2**62, where no pipe inode reaches
_FIFO_BASE = 1 << 62
# Descriptors that are never named pipes: not looked at (a stat each)
_NOT_FIFOS = ("/dev/null", "/dev/pts/", "/dev/tty", "/dev/urandom", "/dev/random", "/proc/", "/sys/")


@dataclass(frozen=True, slots=True)
class SourceRead:
    """One tagged file a process read: where, its tags, its bytes, when (wall clock) and
    whether it is evidence (read directly, or from a file derived with byte evidence)."""

    path: str
    tags: tuple[str, ...]
    bytes: int
    at: float
    evidence: bool = True


@dataclass(slots=True)
class _Process:
    ppid: int = 0
    # pipe inodes whose write (read) end it holds; a socketpair's channel, negated (sockfs
    # and pipefs number inodes apart), is in both: data flows through it both ways
    writes: tuple[int, ...] = ()
    reads: tuple[int, ...] = ()
    seen: float = 0.0              # monotonic time the link was read
    born: float = 0.0              # wall-clock start (fork) time; 0: unknown
    # its pipes and children were looked at on a tagged read since its exec: a later first
    # read (after its writes emptied `sources`) needs no fresh look, the periodic one will do
    looked: bool = False
    sources: OrderedDict[str, SourceRead] = field(default_factory=OrderedDict)
    files: tuple[str, ...] = ()    # files it had open when last looked at (its stdout redirected)


@dataclass(frozen=True, slots=True)
class Flow:
    """Tagged data reaching one writer: every source (newest read last), and how many
    processes it came through."""

    sources: tuple[SourceRead, ...]
    processes: int

    def tags(self) -> list[str]:
        """Every tag of every source, in first-seen order."""
        return list(dict.fromkeys(t for s in self.sources for t in s.tags))

    def since(self, moment: float) -> tuple[SourceRead, ...]:
        """Evidence sources read at or after `moment` (wall clock)."""
        return tuple(s for s in self.sources if s.evidence and s.at >= moment)


class DataFlow:
    """Which process carries which tagged data, and which pipes link processes."""

    def __init__(self, *, max_processes: int = MAX_PROCESSES, max_sources: int = MAX_SOURCES) -> None:
        # tagged data a file open in a process stands for (a derived file): set by the wiring
        self.held: Callable[[str], list[SourceRead]] = lambda _path: []
        self._lock = threading.Lock()
        self._procs: OrderedDict[int, _Process] = OrderedDict()
        self._writers_of: dict[int, set[int]] = {}  # pipe inode -> pids holding its write end
        self._carriers = 0  # processes with sources: 0 means no flow at all (the fast path)
        # (st_dev, st_ino) of a file being written on removable media -> pids that wrote into it
        self._file_writers: OrderedDict[tuple[int, int], set[int]] = OrderedDict()
        # parent pid -> its children that carry tagged data: a shell that opened `> /tmp/x` for
        # a child closes it after the child exited, and is then the file's closer
        self._carrying_children: OrderedDict[int, set[int]] = OrderedDict()
        self._max_processes = max_processes
        self._max_sources = max_sources
        self.dropped = 0  # sources or links a bound forgot (lineage that may be lost)
        self.pairs = SocketPairs()
        # grows whenever a process comes to carry data or a link changes: a flow found empty at
        # one version is empty as long as it stays (the content guard's verdicts rest on it)
        self.version = 0
        # told each new version (under the lock): the content guard's responder process reads it
        # from memory it shares with the agent (agent/prevent/link.py)
        self.on_version: list[Callable[[int], None]] = []

    # ------------------------------------------------------------- records

    def note_exec(self, pid: int, ppid: int = 0) -> None:
        """A process executed a program: record its parent and pipes while it lives."""
        self._record(pid, ppid=ppid, force=True, execed=True)

    def note_process(self, pid: int) -> None:
        """A process did something that may carry data (a write): record its pipes now."""
        self._record(pid)

    def note_read(self, pid: int, reads: list[SourceRead]) -> None:
        """A process opened tagged data (a tagged file, or the sources of a derived one)."""
        if not reads:
            return

        now = time.monotonic()
        with self._lock:
            known = self._procs.get(pid)
            if known is not None and known.looked and now - known.seen < REFRESH_SECONDS:
                # recorded a moment ago and looked at since its exec (most reads of a burst):
                # only what it carries changes, under one hold of the lock
                self._carry(known, reads)
                return
            first = known is None or not known.looked
        # the first tagged read looks at the pipes afresh: tar makes its pipe to gzip after its exec.
        # Once per program: a process writing tagged files one after the other (each write
        # forgets the open that preceded it) is not walked again at each of them
        self._record(pid, force=first)
        if first:
            # and at its children while they live (tar's gzip): on a busy machine a short-lived
            # compressor may be gone before its own exec is handled, and with it its pipe
            for child in _children(pid)[:MAX_CHILDREN]:
                self._record(child)
        with self._lock:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._add(pid, _Process())
            proc.looked = True
            self._carry(proc, reads)
            if proc.ppid > 1:
                self._carrying_children.setdefault(proc.ppid, set()).add(pid)
                self._carrying_children.move_to_end(proc.ppid)
                while len(self._carrying_children) > self._max_processes:
                    self._carrying_children.popitem(last=False)

    def _carry(self, proc: _Process, reads: list[SourceRead]) -> None:
        # under the lock
        if not reads:
            return
        self._bump()
        if not proc.sources:
            self._carriers += 1
        for read in reads:
            proc.sources.pop(read.path, None)
            proc.sources[read.path] = read
        while len(proc.sources) > self._max_sources:
            proc.sources.popitem(last=False)
            self.dropped += 1

    def note_write(self, pid: int, fd: int, *, modified: bool = True) -> None:
        """A process wrote into the file open as `fd` (removable media): one of its writers,
        whoever closes it last ({ cat f; echo; } > x: cat writes, the shell closes). Not
        `modified`: it only closed the file after writing, what it wrote was seen already (or
        it wrote nothing and another process did); it is not counted among the writers."""
        if not modified:
            self._record(pid)
            return
        try:
            st = os.fstat(fd)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        with self._lock:
            writers = self._file_writers.get(key)
            if writers is None:
                writers = self._file_writers[key] = set()
                while len(self._file_writers) > MAX_WRITTEN:
                    self._file_writers.popitem(last=False)
                    self.dropped += 1
            first = pid not in writers
            writers.add(pid)
        # Its first write into this file looks at its pipes afresh: what it reads from may have
        # been opened after its exec was recorded (`openssl enc -in FIFO`, a script reading the
        # pipe of the tar it started), and it may be gone by the time its close is handled
        self._record(pid, force=first)

    def writers(self, fd: int) -> list[int]:
        """Every process that wrote into the file open as `fd` since it was last asked."""
        try:
            st = os.fstat(fd)
        except OSError:
            return []
        with self._lock:
            return sorted(self._file_writers.pop((st.st_dev, st.st_ino), ()))

    def forget_read(self, pid: int, path: str) -> None:
        """The process wrote the tagged file it had opened: it was not reading it."""
        with self._lock:
            proc = self._procs.get(pid)
            if proc is not None and proc.sources.pop(path, None) is not None and not proc.sources:
                self._carriers -= 1

    def carrying(self) -> bool:
        """Whether any process carries tagged data (else no write needs a look)."""
        return self._carriers > 0

    def carriers(self, since: float) -> list[tuple[int, float]]:
        """(pid, start time) of the recorded processes whose latest tagged read was at or after
        `since` (wall clock), live or not: the content guard keeps removable media marked while
        one lives (agent/prevent/arming.py). Free while no process carries anything."""
        if not self._carriers:
            return []
        with self._lock:
            return [(pid, proc.born) for pid, proc in self._procs.items()
                    if proc.sources and next(reversed(proc.sources.values())).at >= since]

    def _record(self, pid: int, *, ppid: int = 0, force: bool = False, execed: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            proc = self._procs.get(pid)
            if proc is not None and not force and now - proc.seen < REFRESH_SECONDS:
                return
        link = _read_link(pid, self.pairs)
        if link is None:
            return  # gone: what was recorded before stays
        parent, writes, reads, files, born, exiting = link
        # a derived file it has open now, or names on its command line, was opened before
        # anything watched it (this thread was behind): it reads it
        held = [read for path in files for read in self.held(path)]
        with self._lock:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._add(pid, _Process())
            # an exec keeps what the process read before: its output may still be in a pipe
            self._unlink(pid, proc)
            reused = bool(proc.born and born and abs(proc.born - born) > 0.05)
            if execed or reused:
                proc.looked = False  # a new program, or a new process under a reused pid
            if not reused and exiting:
                # An exiting process (closing its descriptors, or a zombie: xz after closing its
                # archive, whose close is what asks for its flow) shows few or no descriptors:
                # the pipes it held when last looked at are its links still. Forgetting them
                # lost what tar read after forking xz on a busy machine. A live process's links
                # are what it holds now: a shell or a script capturing each command's output
                # would otherwise carry on what all of its commands ever read
                writes, reads, files = proc.writes, proc.reads, list(proc.files)
            if (proc.ppid, proc.writes, proc.reads, proc.born) != (ppid or parent, writes, reads, born):
                self._bump()
            proc.ppid = ppid or parent
            proc.writes, proc.reads, proc.seen, proc.born = writes, reads, now, born
            proc.files = tuple(files[:MAX_FILES])
            for inode in writes:
                self._writers_of.setdefault(inode, set()).add(pid)
            self._procs.move_to_end(pid)
            self._carry(proc, held)

    def _bump(self) -> None:
        # under the lock
        self.version += 1
        for told in self.on_version:
            told(self.version)

    def _add(self, pid: int, proc: _Process) -> _Process:
        self._procs[pid] = proc
        while len(self._procs) > self._max_processes:
            old_pid, old = self._procs.popitem(last=False)
            self._unlink(old_pid, old)
            if old.sources:
                self._carriers -= 1
                self.dropped += 1
        return proc

    def _unlink(self, pid: int, proc: _Process) -> None:
        for inode in proc.writes:
            holders = self._writers_of.get(inode)
            if holders is not None:
                holders.discard(pid)
                if not holders:
                    del self._writers_of[inode]

    # ------------------------------------------------------------- queries

    def flow(self, pids: list[int]) -> Flow:
        """Tagged data reaching these writers: their own reads, their parents' and
        grandparents', and whatever reached the write ends of the pipes they read from."""
        cutoff = time.time() - CARRY_SECONDS
        found: dict[str, SourceRead] = {}

        def take(proc: _Process, until: float) -> bool:
            for read in proc.sources.values():
                if cutoff <= read.at <= until:
                    kept = found.get(read.path)
                    if kept is None or kept.at < read.at or (read.evidence and not kept.evidence):
                        found[read.path] = read
            return False

        visited = self._walk(pids, take)
        ordered = sorted(found.values(), key=lambda s: s.at)
        return Flow(tuple(ordered), visited)

    def reached(self, pids: list[int], path: str) -> bool:
        """Whether this one tagged file reached these writers (as `flow` would name it): one
        look-up per process, not a walk over everything they read (a `cp -r` of 2,000 tagged
        files asks at each of its writes)."""
        cutoff = time.time() - CARRY_SECONDS
        found: list[bool] = []

        def take(proc: _Process, until: float) -> bool:
            read = proc.sources.get(path)
            if read is not None and cutoff <= read.at <= until:
                found.append(True)
            return bool(found)

        self._walk(pids, take)
        return bool(found)

    def _walk(self, pids: list[int], take: Callable[[_Process, float], bool]) -> int:
        """Call `take(process, reads up to this time count)` for each process whose data
        reaches these writers, until it returns True; returns how many were visited."""
        # pid -> the widest reach it was visited with: (reads up to this time count, reached
        # other than as a parent). `tar czf` is its gzip's parent *and* upstream of its pipe:
        # met first as the parent (reads until the fork), it is looked at again through the
        # pipe (everything it read), or all it read after forking gzip would be lost.
        visited: dict[int, tuple[float, bool]] = {}
        if not self._carriers:
            return 0
        with self._lock:
            # (pid, parent generations left, reached as a parent, reads up to this time count):
            # a parent hands a child what it had read when it forked it, not what it read later
            # nor what reached it through its own pipes (the shell reading a child's output)
            queue = [(pid, ANCESTOR_GENERATIONS, False, math.inf) for pid in dict.fromkeys(pids)]
            while queue and len(visited) < MAX_VISIT:
                pid, generations, parent, until = queue.pop(0)
                seen = visited.get(pid)
                if pid <= 1 or (seen is not None and seen[0] >= until and (seen[1] or parent)):
                    continue
                visited[pid] = (max(until, seen[0]) if seen else until, not parent or bool(seen and seen[1]))
                proc = self._procs.get(pid)
                if proc is None:
                    continue
                if proc.sources and take(proc, until):
                    break
                if generations > 0 and proc.ppid > 1:
                    forked = min(until, proc.born + FORK_SLACK_SECONDS)
                    queue.append((proc.ppid, generations - 1, True, forked))
                if parent:
                    continue
                unknown = []
                for inode in proc.reads:
                    # upstream of a pipe: its writers, and their parents (tar -> its gzip)
                    writers = self._writers_of.get(inode, ())
                    queue.extend((writer, 1, False, math.inf) for writer in writers)
                    if not writers:
                        unknown.append(inode)
                mother = self._procs.get(proc.ppid) if unknown else None
                if mother is not None and not set(unknown) <= set(mother.reads):
                    # a pipe nobody was seen holding the write end of, which the parent did not
                    # hand down as its own input: the parent made it after its exec and was gone
                    # before its first tagged read was handled (tar and the xz it forks, on a
                    # busy machine). It is upstream: everything it read, not only until the fork
                    queue.append((proc.ppid, 1, False, math.inf))
        return len(visited)

    def openers(self, dev: int, ino: int, born: float, limit: int = 8, writer: int = 0) -> list[int]:
        """Processes that have the file (dev, ino) open now: they opened it before anything
        watched it (a file that just became derived). Looked at: the `limit` most recent
        recorded processes started since `born` (wall clock), and the live children of the
        `writer`'s parent and grandparent (the next command of its script, which the event
        thread may not have heard of yet: `tar czf x.tgz ... && openssl enc -in x.tgz ...`).
        This runs on the event thread: bounded."""
        with self._lock:
            recent = [pid for pid, proc in reversed(self._procs.items()) if proc.born >= born][:limit]
            ancestors: list[int] = []
            proc = self._procs.get(writer)
            while proc is not None and proc.ppid > 1 and len(ancestors) < ANCESTOR_GENERATIONS:
                ancestors.append(proc.ppid)
                proc = self._procs.get(proc.ppid)
        for ancestor in ancestors:
            recent.extend(_children(ancestor)[:MAX_CHILDREN])
        return [pid for pid in dict.fromkeys(recent) if pid != writer and _holds(pid, dev, ino)]

    def has_carrying_child(self, pid: int) -> bool:
        """Whether a child of `pid` carries tagged data (its close of a file may end a write by
        that child). A dictionary look-up: asked per close-after-write on the local file systems."""
        return pid in self._carrying_children

    def child_writers(self, pid: int, path: str) -> list[int]:
        """Children of `pid` that carry tagged data and had `path` open when last looked at:
        `sh -c 'base64 db > /tmp/x && ...'` (dash) opens /tmp/x for base64, which writes it, and
        the shell closes it after base64 has exited."""
        with self._lock:
            children = self._carrying_children.get(pid, ())
            return [child for child in children
                    if (proc := self._procs.get(child)) is not None and proc.sources and path in proc.files]

    def carried_by(self, pid: int) -> bool:
        """Whether tagged data reaches process `pid`, so a write by it may carry some: read in
        the last CARRY_SECONDS by it, by its parents before they forked it, or upstream of its
        pipes and socketpairs (what `flow([pid])` would name). Thread-safe; free while no
        process carries anything; otherwise reads /proc/PID at most once a second per process
        and stops at the first carrier found. Asked per event by the fanotify reader (and by
        a permission check before a write is allowed): keep it cheap and its meaning stable."""
        if not self._carriers:
            return False
        self._record(pid)
        cutoff = time.time() - CARRY_SECONDS
        found: list[bool] = []

        def take(proc: _Process, until: float) -> bool:
            if any(cutoff <= read.at <= until for read in proc.sources.values()):
                found.append(True)
            return bool(found)

        self._walk([pid], take)
        return bool(found)


def _holds(pid: int, dev: int, ino: int) -> bool:
    """Whether a live process has the file (dev, ino) open."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if st.st_ino == ino and st.st_dev == dev:
            return True
    return False


def _children(pid: int) -> list[int]:
    """Live children of a process's main thread (/proc/PID/task/PID/children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
            return [int(child) for child in fh.read(4096).split()]
    except (OSError, ValueError):
        return []


def _argument_paths(base: str) -> list[str]:
    """Paths named on a process's command line (`openssl enc -in /tmp/x.tgz`): at its exec it
    has not opened them yet, and it may be gone before its open is handled."""
    try:
        with open(f"{base}/cmdline", "rb") as fh:
            args = fh.read(_CMDLINE_BYTES).split(b"\0")[1:]
        cwd = os.readlink(f"{base}/cwd")
    except OSError:
        return []
    out = []
    for raw in args[:_MAX_ARGS]:
        arg = os.fsdecode(raw)
        if arg and not arg.startswith("-"):
            out.append(arg if arg.startswith("/") else os.path.normpath(os.path.join(cwd, arg)))
    return out


_Link = tuple[int, tuple[int, ...], tuple[int, ...], list[str], float, bool]


def _read_link(pid: int, pairs: SocketPairs) -> _Link | None:
    """(ppid, pipe inodes written, pipe inodes read, paths of files open, start time, whether it
    has exited and awaits its parent) of a process in /proc; None when it is gone. A socketpair
    end counts as both, as its negated channel."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as fh:
            ppid, exiting, started = stat_fields(fh.read())
    except (OSError, ValueError, IndexError):
        return None
    born = _boot_time() + started / _TICKS
    links = procinfo.fd_links(pid)
    if links is None:
        return None
    writes: list[int] = []
    reads: list[int] = []
    files = _argument_paths(base)
    sockets = 0
    for name, target in links:
        if target.startswith("/"):
            fifo = _fifo_key(pid, name, target)
            if not fifo:
                files.append(target)
                continue
            inode = fifo
        elif target.startswith("socket:[") and sockets < MAX_SOCKETS:
            sockets += 1
            channel = pairs.channel(int(target[8:-1]))
            if channel:
                writes.append(-channel)
                reads.append(-channel)
            continue
        elif target.startswith("pipe:["):
            inode = int(target[6:-1])
        else:
            continue
        flags = procinfo.fd_flags(pid, name)
        if flags is None:
            continue
        mode = flags & _O_ACCMODE
        if mode in (os.O_WRONLY, os.O_RDWR):
            writes.append(inode)
        if mode in (os.O_RDONLY, os.O_RDWR):
            reads.append(inode)
    return ppid, tuple(sorted(set(writes))), tuple(sorted(set(reads))), files, born, exiting


_PF_EXITING = 0x4  # include/linux/sched.h: set as do_exit begins, before the descriptors are closed


def stat_fields(stat: bytes) -> tuple[int, bool, int]:
    """(ppid, exiting, start time in clock ticks) from a /proc/PID/stat line. Exiting: it has
    begun to exit (its descriptors are being closed, or are gone) or awaits its parent."""
    fields = stat[stat.rindex(b")") + 2 :].split()
    # `tar cJf d.txz` runs `sh -c xz` with the archive as its output: the shell, exiting after
    # xz, closes its stdin pipe and then the archive, and that close-after-write's look at it
    # found it alive without a descriptor (a zombie a moment later): its pipe to tar was lost
    exiting = fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)
    return int(fields[1]), exiting, int(fields[19])


def is_alive(pid: int, born: float) -> bool:
    """Whether process `pid` started at wall time `born` (0: unknown, any) still lives."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            started = stat_fields(fh.read())[2]
    except (OSError, ValueError, IndexError):
        return False
    return not born or abs(_boot_time() + started / _TICKS - born) <= 0.05


def _fifo_key(pid: int, fd: str, target: str) -> int:
    """The key of a named pipe open as `fd` in `pid` (0 when it is anything else): a stat of
    the descriptor, for paths that may be one."""
    if target.startswith(_NOT_FIFOS):
        return 0
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return 0
    if not S_ISFIFO(st.st_mode):
        return 0
    return _FIFO_BASE | (hash((st.st_dev, st.st_ino)) & (_FIFO_BASE - 1))


_TICKS = os.sysconf("SC_CLK_TCK")
_boot: list[float] = []


def _boot_time() -> float:
    """Wall-clock boot time (process start times count from it), read once."""
    if not _boot:
        try:
            with open("/proc/stat", "rb") as fh:
                line = next(line for line in fh if line.startswith(b"btime "))
            _boot.append(float(line.split()[1]))
        except (OSError, StopIteration, ValueError):
            _boot.append(0.0)
    return _boot[0]
