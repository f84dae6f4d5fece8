"""What the agent lost and has not yet reported: counts per reason, and the agent.gap that reports them."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from protos import events
from protos import exfilguard_pb2 as pb

REASON_SPOOL_FULL = "spool_full"
REASON_DISK_FULL = "disk_full"
REASON_QUEUE_FULL = "queue_full"
REASON_TOO_LARGE = "event_too_large"
REASON_WRITE_FAILED = "spool_write_failed"
REASON_SEQUENCE_RESET = "sequence_reset"
REASON_REFUSED = "refused"

REASON_TEXT = {
    REASON_SPOOL_FULL: "the on-disk spool was full (collector unreachable for too long?)",
    REASON_DISK_FULL: "the disk holding the spool was full",
    REASON_QUEUE_FULL: "events arrived faster than the spool could store them",
    REASON_TOO_LARGE: "an event was larger than the largest message the collector accepts",
    REASON_WRITE_FAILED: "the spool database could not be written",
    REASON_SEQUENCE_RESET: "the spool was deleted, replaced or restored from an old copy",
    REASON_REFUSED: "the collector refused the event as malformed (a copy is kept in state_dir/refused)",
}


@dataclass
class Loss:
    """Events known to be lost for one reason and not yet reported by an agent.gap."""

    lost: int
    first: tuple[int, int]  # (seconds, nanos) of the earliest lost event
    last: tuple[int, int]

    def add(self, ts: tuple[int, int]) -> None:
        """Count one more lost event that happened at `ts`."""
        self.lost += 1
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)


def gap_event(reason: str, loss: Loss) -> pb.Event:
    """The agent.gap reporting `loss` (without agent id and sequence: the spool stamps those)."""
    gap = events.new_event("agent.gap")
    gap.exfilguard.gap.lost = loss.lost
    gap.exfilguard.gap.reason = reason
    gap.exfilguard.gap.first.CopyFrom(Timestamp(seconds=loss.first[0], nanos=loss.first[1]))
    gap.exfilguard.gap.last.CopyFrom(Timestamp(seconds=loss.last[0], nanos=loss.last[1]))
    gap.event.reason = f"{loss.lost} events lost: {REASON_TEXT.get(reason, reason)}"
    return gap


_LATEST_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the latest time the collector accepts
_MAX_PROBLEM = 500


def refused_gap(refused: pb.Event, problem: str) -> pb.Event:
    """The agent.gap that takes the place (and sequence) of one event the collector refused.

    Its times are the refused event's when they are valid, else now: the gap itself must pass.
    """
    gap = events.new_event("agent.gap")
    ts = refused.timestamp
    when = ts if 0 <= ts.nanos < 1_000_000_000 and 0 < ts.seconds <= _LATEST_SECONDS else gap.timestamp
    gap.exfilguard.gap.lost = 1
    gap.exfilguard.gap.reason = REASON_REFUSED
    gap.exfilguard.gap.first.CopyFrom(when)
    gap.exfilguard.gap.last.CopyFrom(when)
    action = refused.event.action if refused.event.action.isprintable() else "?"
    gap.event.reason = (
        f"1 event lost: {REASON_TEXT[REASON_REFUSED]}; it was {action[:64]!r}, refused with: "
        f"{problem[:_MAX_PROBLEM]}"
    )
    return gap


def add_loss(losses: dict[str, Loss], reason: str, event: pb.Event) -> None:
    """Count `event` as lost for `reason` in `losses`."""
    ts = (event.timestamp.seconds, event.timestamp.nanos)
    if reason in losses:
        losses[reason].add(ts)
    else:
        losses[reason] = Loss(1, ts, ts)

