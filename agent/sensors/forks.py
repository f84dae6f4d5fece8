"""ForkWatch: which process forked which, from the kernel's process connector (root only).

A child that forks without an exec (rsync's receiver, a worker of a Python pool) and exits
before the fanotify reader looks at /proc leaves nothing but its pid. The kernel announces each
fork on a netlink socket (NETLINK_CONNECTOR, CN_IDX_PROC) as it happens, with both pids; the
agent subscribes to forks alone (Linux >= 6.6 filters by event; an older kernel sends exec and
exit too, dropped here), so the cost is one small message per new process on the machine.
The parent, still alive or known by its exec, then names the child (`inferred`).
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import os
import select
import socket
import struct
import threading

from agent.background import Background
from agent.sensors.stoppipe import StopPipe

log = logging.getLogger(__name__)

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_NLMSG_DONE = 3
_PROC_CN_MCAST_LISTEN = 1
_PROC_CN_MCAST_IGNORE = 2
_PROC_EVENT_FORK = 0x1
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
# what, cpu, timestamp; then a fork's parent pid, parent tgid, child pid, child tgid
_FORK = struct.Struct("=IIQIIII")
_AT = _NLMSG.size + _CN_MSG.size
_RCVBUF = 1 << 20  # a burst of forks while the thread waits for a CPU
GATHER = 0.05  # seconds the thread lets forks gather before it reads them
REMEMBERED = 16384  # children remembered, oldest out: pids of processes forked the last while
_PID_BITS = 22  # pids are below 2**22 (the kernel's PID_MAX_LIMIT on 64-bit)
_PID_MASK = (1 << _PID_BITS) - 1


class ForkWatch:
    """The parent of each process forked since start (threads left out), by pid.

    `parent_of(pid)` is (parent pid, order of the fork), (0, 0) when unknown. A pid forked again
    (reused) replaces its entry; the order lets a caller tell that a parent's pid was reused
    after its child was forked (the parent's own entry is then newer than the child's)."""

    name = "forks"

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        # child pid -> order of its fork << _PID_BITS | parent pid: one int a fork, not a tuple of
        # two (a full table of 16,384 forks 3.5 -> 1.8 MiB)
        self._parents: dict[int, int] = {}
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # the socket: the thread, or a look-up that missed
        self._order = 0
        self._sock: socket.socket | None = None
        self._stop = StopPipe()
        self._reader = Background("forks", self._run)
        self.seen = 0  # forks read
        self.lost = 0  # times the socket overflowed (forks not heard of)

    def start(self) -> bool:
        """Subscribe and read; False (logged) when the kernel refuses (no privilege, no
        connector, a container's own pid namespace)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        except OSError as exc:
            log.warning("fork notifications unavailable: %s", exc.strerror)
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, _CN_IDX_PROC))
            sock.send(_control(_PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            sock.close()
            log.warning("fork notifications unavailable: %s", exc.strerror)
            return False
        sock.setblocking(False)
        self._sock = sock
        self._reader.start()
        return True

    def stop(self) -> None:
        """Unsubscribe and close; idempotent."""
        self._stop.wake(self._reader)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(_control(_PROC_CN_MCAST_IGNORE))
            self._sock.close()
            self._sock = None
            self._stop.close()

    def parent_of(self, pid: int) -> tuple[int, int]:
        """(parent pid, order of the fork) of `pid`; (0, 0) when its fork was not seen. A pid
        not known yet may be in what the kernel queued since the thread last read: read first."""
        found = self._parents.get(pid)
        if found is None and self._sock is not None:
            with contextlib.suppress(OSError):
                self._drain(self._sock)
            found = self._parents.get(pid)
        return (found & _PID_MASK, found >> _PID_BITS) if found is not None else (0, 0)

    def _run(self) -> None:
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        self._stop.register(poller)
        resting = select.poll()  # the stop pipe alone
        self._stop.register(resting)
        while True:
            # a wake-up per fork cost ten times its reading: forks are gathered for GATHER
            # seconds (each notice keeps its pids; a look-up meanwhile reads them itself)
            if self._stop.rang(poller.poll()) or self._stop.rang(resting.poll(int(GATHER * 1000))):
                return
            try:
                self._drain(self._sock)
            except Exception:  # a sensor thread must not die on one bad message
                log.exception("fork notification handling failed")

    def _drain(self, sock: socket.socket) -> None:
        with self._reading:
            self._drain_held(sock)

    def _drain_held(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise
                # the kernel dropped forks while we were behind: children forked then are not
                # known by their parent (their attribution falls back as without this watch)
                self.lost += 1
                if self.lost == 1 or self.lost % 100 == 0:
                    log.warning("fork notifications overflowed %d time(s): some forks were missed", self.lost)
                continue
            self._take(data)

    def _take(self, data: bytes) -> None:
        if len(data) < _AT + _FORK.size:
            return
        what, _cpu, _when, _ppid, parent, child, child_tgid = _FORK.unpack_from(data, _AT)
        if what != _PROC_EVENT_FORK or child != child_tgid:
            return  # another kind (an older kernel sends all), or a new thread
        self.seen += 1
        with self._lock:
            self._order += 1
            self._parents.pop(child, None)
            self._parents[child] = self._order << _PID_BITS | parent
            if len(self._parents) > self._size:
                del self._parents[next(iter(self._parents))]


def _control(op: int) -> bytes:
    """A netlink message to the process connector: listen (forks only) or stop listening."""
    body = struct.pack("=II", op, _PROC_EVENT_FORK)
    cn = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(body), 0) + body
    return _NLMSG.pack(_NLMSG.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn
