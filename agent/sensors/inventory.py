"""InventorySensor: per tag, how many files and bytes are under it, kept current.

The collector judges "the whole collection was copied" against these figures. Sent at
start, after every change (debounced) and at least every `inventory_seconds`.
"""

from __future__ import annotations

import threading
import time

from agent.background import Background
from agent.sensors import Emit, procinfo
from agent.sensors.fingerprints import FingerprintIndex
from protos import exfilguard_pb2 as pb
from protos.events import new_event

_DEBOUNCE_SECONDS = 2.0


class InventorySensor:
    """Emits `agent.inventory` events carrying `exfilguard.inventory` (tag, files, bytes)."""

    name = "inventory"

    def __init__(self, index: FingerprintIndex, emit: Emit, every_seconds: float = 300.0,
                 check_seconds: float = _DEBOUNCE_SECONDS) -> None:
        self.index = index
        self._emit = emit
        self._every = every_seconds
        self._check = check_seconds
        self._stop = threading.Event()
        self._changed = threading.Event()
        index.wake_on_change(self._changed)
        self._background = Background("inventory", self._run)
        self._sent_version = -1
        self._sent: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        """Report now, then keep reporting changes."""
        self.report()
        self._background.start()

    def stop(self) -> None:
        """Stop reporting; idempotent."""
        self._stop.set()
        self._changed.set()
        self._background.join()

    def report(self, force: bool = True) -> bool:
        """Emit the inventory (if `force` or it changed); True if emitted."""
        self.index.settle()  # files indexed mid-write: their final size counts
        version = self.index.version
        totals = self.index.totals()
        if not force and (version == self._sent_version or totals == self._sent):
            self._sent_version = version
            return False
        self._sent_version, self._sent = version, totals
        event = new_event("agent.inventory")
        for tag, (files, size) in totals.items():
            event.exfilguard.inventory.append(pb.TagInventory(tag=tag, files=files, bytes=size))
        event.exfilguard.attribution = procinfo.NONE
        self._emit(event)
        return True

    def _run(self) -> None:
        # Sleeps until the index changes (not on a timer: an idle agent's wake-ups cost it more
        # CPU than their work), then lets a burst of changes gather for `check` seconds. Files
        # indexed mid-write are looked at again every `check` seconds until they settle.
        sent = time.monotonic()
        while not self._stop.is_set():
            rest = self._check if self.index.unsettled else max(0.0, sent + self._every - time.monotonic())
            changed = self._changed.wait(rest)
            if self._stop.is_set() or (changed and self._stop.wait(self._check)):
                return
            self._changed.clear()
            if time.monotonic() - sent >= self._every:
                self.report(force=True)
                sent = time.monotonic()
            elif self.report(force=False):
                sent = time.monotonic()
