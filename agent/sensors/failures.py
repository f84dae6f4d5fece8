"""Events a sensor failed to handle, reported rather than lost: `agent.gap` events a sensor emits.

    failed = FailedEvents(emit, "file")    # a sensor's handler calls failed() in its except
    failed()                               # counted; the agent.gap goes out at once, then at most
    failed.flush()                         # every GAP_SECONDS while failures go on; at stop
"""

from __future__ import annotations

import threading
import time

from agent.sensors import Emit, procinfo
from protos import exfilguard_pb2 as pb
from protos.events import new_event

GAP_SECONDS = 10.0  # events lost to errors are reported at most this often
REASON = "handling_failed"


def sensor_gap(reason: str, lost: int, text: str) -> pb.Event:
    """An agent.gap a sensor reports: `lost` events (0: not known how many) for `reason`."""
    event = new_event("agent.gap")
    event.exfilguard.gap.reason = reason
    if lost:
        event.exfilguard.gap.lost = lost
    event.event.reason = text
    event.exfilguard.attribution = procinfo.NONE
    return event


class FailedEvents:
    """Counts events whose handling raised (a defect; the traceback is logged where it is caught)
    and reports them in an agent.gap (reason `handling_failed`, `lost` = the count)."""

    def __init__(self, emit: Emit, what: str) -> None:
        self._emit = emit
        self._what = what  # "fanotify", "file": which sensor's events
        self._count = 0
        self._reported_at = -GAP_SECONDS
        self._lock = threading.Lock()

    def __call__(self) -> None:
        """One more event lost to an error (any thread)."""
        with self._lock:
            self._count += 1
            wait = self._reported_at + GAP_SECONDS - time.monotonic()
            if wait > 0:
                if self._count == 1:  # the first since the last gap: report it when the time comes
                    later = threading.Timer(wait, self.flush)
                    later.daemon = True
                    later.start()
                return
        self.flush()

    def flush(self) -> None:
        """Report what is counted and not yet reported (also at stop)."""
        with self._lock:
            lost, self._count = self._count, 0
            if lost:
                self._reported_at = time.monotonic()
        if lost:
            self._emit(sensor_gap(REASON, lost, f"{lost} {self._what} events could not be handled "
                                                "(see the agent's log): not reported"))
