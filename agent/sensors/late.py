"""LateExaminer: what was written to removable media while the agent was not running.

The agent notes in its state directory, every second and at a clean stop, that it is
running (`running-until`, a wall-clock time, written over in place through a descriptor kept
open: a new file renamed over it each second was a close-after-write on the root file system,
which woke the agent's own fanotify reader, and a directory change for the journal). At the
next start the window from that moment to the start is a time nobody watched: on every
removable mount, when it is first seen in this run (present at start or plugged in later), the
files changed (ctime) inside that window are examined like live writes, and their `file.write` /
`file.copy` events carry `exfilguard.late: true` and the window. No process is known for them:
identification is by content only (exact hash, archive members, chunks, text), never by
lineage. Writes of the last second or two before a crash fall in the window although they were
seen live: they are reported twice (once live, once late), never not at all.
"""


from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from agent.background import Background
from agent.sensors.copies import CopyDetector
from agent.sensors.media import RemovableMedia, RemovableMount

log = logging.getLogger(__name__)

STATE_FILE = "running-until"
MARGIN_SECONDS = 1.0  # file times come from a coarse clock; the last note may be up to `every` old
MAX_FILES = 10_000    # files looked at per mount (a full stick is not walked forever)
_NOTE_BYTES = 24      # the note's fixed length: padded, so each write covers the one before


class LateExaminer:
    """Notes that the agent runs; examines removable files changed while it did not."""

    name = "late"

    def __init__(self, state_dir: str, media: RemovableMedia, copies: CopyDetector, *,
                 every: float = 1.0) -> None:
        self._path = Path(state_dir) / STATE_FILE
        self._media = media
        self._copies = copies
        self._every = every
        self._stopping = threading.Event()
        self._background = Background("late", self._run)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._fd = -1
        self.window: tuple[float, float] | None = None  # the last time nobody watched
        self.examined = 0

    def start(self) -> None:
        """Read when the agent last ran, then keep noting that it runs."""
        # the copy detector's start: from then on, a mount's first moments are its catch-up scan's
        started = self._copies.started_at
        last = self._last_running()
        if last is not None and last < started:
            self.window = (last - MARGIN_SECONDS, started)
            log.info("agent not running from %s to %s: removable media changed then are examined",
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)))
        self._open()
        self._note()
        self._media.subscribe(self._mount_changed)
        for mount in self._media.mounts():
            self._mount_changed(mount, appeared=True)
        if self._fd >= 0:  # else nothing to note (no state directory): no thread waking each second
            self._background.start()

    def stop(self) -> None:
        """A clean stop: the window of the next start begins now."""
        self._stopping.set()
        if self._background.running:
            self._background.join()
        self._note()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _run(self) -> None:
        while not self._stopping.wait(self._every):
            self._note()

    def _last_running(self) -> float | None:
        try:
            return float(self._path.read_text().strip())
        except FileNotFoundError:
            return None  # first run here
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): writes made while the agent was down are not examined",
                        self._path, exc)
            return None

    def _open(self) -> None:
        if not self._path.parent.is_dir():
            return  # no state directory (a test run of the sensors alone): nothing to remember
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(self._fd, _NOTE_BYTES)
        except OSError as exc:
            log.warning("cannot write %s: %s; writes made while the agent is down will not be examined",
                        self._path, exc.strerror)
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1

    def _note(self) -> None:
        if self._fd < 0:
            return
        try:
            # one small write of a fixed length at the file's start: each covers the last whole
            os.pwrite(self._fd, f"{time.time():{_NOTE_BYTES - 1}.3f}\n".encode(), 0)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._path, exc.strerror)

    def _mount_changed(self, mount: RemovableMount, appeared: bool) -> None:
        if not appeared or self.window is None:
            return
        with self._lock:
            if mount.point in self._seen:
                return
            self._seen.add(mount.point)
        window = self.window
        threading.Thread(target=self.examine, args=(mount, window), name="exfilguard-late-scan",
                         daemon=True).start()

    def examine(self, mount: RemovableMount, window: tuple[float, float]) -> int:
        """Report the files on `mount` changed (ctime) within `window`; returns how many."""
        found = self._copies.examine_changed(mount.point, window[0], window[1], late=True, limit=MAX_FILES)
        self.examined += found
        return found
