"""SecondLook: a removable write judged without evidence is judged again when a later fact ties it.

A write on a stick is judged once its close is handled: by content, and by what is known then
of where its bytes came from. On a busy machine, or when the staged file is still open when its
copy is made (a script that flushes `/tmp/x.enc`, copies it with another program, and closes it
after), the fact that ties the copy to tagged data lands after that judgement: the staged file
becomes derived (its writer's close), or a rename of it is followed. The write was a guess (low)
or nothing, and stayed so.

So a write judged without evidence waits here, for WINDOW_SECONDS at most, at most MAX_WAITING
of them (the oldest leaves first). Each new derived file wakes one thread, which looks at the
waiting writes again: still the same file (device, inode, size, modification time)? equal to a
derived file, or one part of one (what the copy detector asks first)? A write tied that way gets
a new `file.copy` on that evidence whose `exfilguard.copy.revises` is the id of the first
judgement (its `file.copy` guess, or its `file.write`): the evidence chain only grows. Nothing is
held open meanwhile (a stick stays unmountable): a waiting file is opened again by its path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent.background import Background
from agent.sensors.staging import Written
from protos import exfilguard_pb2 as pb

log = logging.getLogger(__name__)

WINDOW_SECONDS = 20.0  # a write waits this long for the fact that ties it
MAX_WAITING = 64       # writes waiting at once (the oldest leaves first)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A removable write judged without evidence, as it was judged."""

    written: Written      # its fd is not kept: the file is opened again by path
    device: pb.Device
    mount: pb.Mount
    first: str            # event.id of its first judgement (file.copy guess, or file.write)
    key: tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns) then
    until: float          # monotonic


# told an open descriptor on a waiting file: True when it tied it (and emitted the revision)
Rejudge = Callable[[Waiting, int], bool]


class SecondLook:
    """Writes waiting for a late fact, and the thread that looks at them again."""

    name = "second-look"

    def __init__(self, rejudge: Rejudge, *, window: float = WINDOW_SECONDS, limit: int = MAX_WAITING) -> None:
        self._rejudge = rejudge
        self._window = window
        self._limit = limit
        self._lock = threading.Lock()
        self._waiting: OrderedDict[str, Waiting] = OrderedDict()  # by event id of the first judgement
        self._woken = threading.Event()
        self._stopping = False
        self._background = Background("second-look", self._run)
        self.revised = 0   # writes judged again on a later fact
        self.expired = 0   # writes that waited in vain (or were pushed out by newer ones)

    def start(self) -> None:
        """Start the thread; until then writes do not wait."""
        self._stopping = False
        self._background.start()

    def stop(self) -> None:
        """Stop the thread and forget the waiting writes; idempotent."""
        self._stopping = True
        self._woken.set()
        self._background.join()
        with self._lock:
            self._waiting.clear()

    def wait(self, written: Written, device: pb.Device, mount: pb.Mount, first: str,
             key: tuple[int, int, int, int] | None) -> None:
        """A write was judged without evidence (`first`: that judgement's event id); `key`, its
        file as judged (None: unknown, it cannot be checked again)."""
        if key is None or not self._background.running:
            return
        held = Written(path=written.path, size=written.size, pid=written.pid, info=written.info,
                       attribution=written.attribution, writers=written.writers, owner=written.owner)
        with self._lock:
            self._waiting[first] = Waiting(held, device, mount, first, key, time.monotonic() + self._window)
            while len(self._waiting) > self._limit:
                self._waiting.popitem(last=False)
                self.expired += 1

    def fact(self, _path: str = "") -> None:
        """Something that may tie a waiting write arrived (a derived file): look again. Cheap:
        called under the fingerprint index's lock."""
        if self._waiting:  # lock-free: an empty dict is the usual case
            self._woken.set()

    def waiting(self) -> int:
        """How many writes wait now."""
        with self._lock:
            return len(self._waiting)

    def _run(self) -> None:
        while not self._stopping:
            # nothing waiting: asleep until a write waits and a fact comes (no timer at all)
            self._woken.wait(timeout=self._window if self._waiting else None)
            self._woken.clear()
            if not self._stopping:
                self.look()

    def look(self) -> int:
        """Look at every waiting write again (the thread's work; callable directly). Returns how
        many were judged again."""
        now = time.monotonic()
        with self._lock:
            for first in [k for k, w in self._waiting.items() if w.until < now]:
                del self._waiting[first]
                self.expired += 1
            batch = list(self._waiting.values())
        done = 0
        for waiting in batch:
            if self._look_at(waiting):
                done += 1
                with self._lock:
                    self._waiting.pop(waiting.first, None)
        self.revised += done
        return done

    def _look_at(self, waiting: Waiting) -> bool:
        try:
            fd = os.open(waiting.written.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False  # gone, renamed: it cannot be checked again (it may be written anew)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != waiting.key:
                return False  # written since: its next close is judged on its own
            return self._rejudge(waiting, fd)
        except OSError as exc:
            log.info("looking again at %s: %s", waiting.written.path, exc)
            return False
        finally:
            os.close(fd)
