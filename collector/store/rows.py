"""An event to its stored row, and a stored row back to its ECS mapping, for both stores.

`event_row` is what ingest writes. `stored_mapping` is what every reader (exports, rebuild) reads
back; `stored_canonical` what the sealer hashes of it.

Ingest refuses what a reader cannot take (collector/wirecheck.py), but a store written by an
older collector may hold such rows. A reader must never crash-loop on one: the row is chained
and exported in a defined form (`protos.events.to_mapping` leaves the bad field out and
describes it under `exfilguard.invalid`; bytes that do not parse become a mapping of agent,
sequence and that description), and a WARNING names the agent and sequence (at most ten lines
a second, each carrying the count so far, so an old store full of them does not flood the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, overload

from google.protobuf.message import DecodeError

from collector.store.base import Mapping
from protos import chain
from protos import events as protos_events
from protos import exfilguard_pb2 as pb
from protos.events import seconds_text

log = logging.getLogger("exfilguard.collector.store")

_LINES_PER_SECOND = 10


class _BadRows:
    """Counts bad rows met in this process; says whether one more deserves a log line."""

    def __init__(self) -> None:
        self.count = 0
        self._second = 0
        self._logged = 0
        self._lock = threading.Lock()

    def note(self) -> bool:
        with self._lock:
            self.count += 1
            now = int(time.monotonic())
            if now != self._second:
                self._second, self._logged = now, 0
            self._logged += 1
            return self._logged <= _LINES_PER_SECOND


bad_rows = _BadRows()


def stored_mapping(location: str, agent_id: str, sequence: int, data: bytes) -> Mapping:
    """The mapping of one stored row; a row no reader could take is logged and given its defined form."""
    try:
        event = pb.Event.FromString(data)
    except DecodeError as exc:
        mapping: Mapping = {
            "agent.id": agent_id,
            "event.sequence": sequence,
            protos_events.INVALID: [f"stored event ({len(data)} bytes) does not parse: {exc}"],
        }
    else:
        mapping = protos_events.to_mapping(event)
        if protos_events.INVALID not in mapping:
            return mapping
    if bad_rows.note():
        log.warning(
            "stored event of agent %s, sequence %d cannot be read as it was sent (%s); "
            "it is chained and exported without it, described under %s",
            agent_id,
            sequence,
            "; ".join(mapping[protos_events.INVALID]),
            protos_events.INVALID,
            extra={"agent_id": agent_id, "sequence": sequence, "store": location, "bad_rows": bad_rows.count},
        )
    return mapping


def stored_mappings(location: str, rows: Sequence[tuple[str, int, bytes]]) -> list[Mapping]:
    """`stored_mapping` of each (agent id, sequence, bytes) row, in order: a batch's rows decoded
    by the Event's straight-line code (without two calls' worth of wrapping an event, 0.5 us of
    its 6); a row that code cannot take goes the single row's way (its defined form, logged)."""
    decode, mapping_of, invalid = pb.Event.FromString, protos_events.event_mapping, protos_events.INVALID
    out: list[Mapping] = []
    for agent_id, sequence, data in rows:
        try:
            mapping: Mapping | None = mapping_of(decode(data))
        except (DecodeError, protos_events.TimestampError):
            mapping = None
        if mapping is None or invalid in mapping:
            mapping = stored_mapping(location, agent_id, sequence, data)
        out.append(mapping)
    return out


def stored_canonical(location: str, agent_id: str, sequence: int, data: bytes) -> bytes:
    """The canonical bytes the chain hashes for one stored row: `canonical_event(stored_mapping(...))`,
    built straight from the protobuf (the sealer's path; protos.chain.canonical_stored, else
    protos.chain.canonical_message)."""
    canonical = chain.canonical_stored(data)
    if canonical is None:
        try:
            canonical = chain.canonical_message(pb.Event.FromString(data))
        except DecodeError:
            canonical = None
    if canonical is None:  # a row no reader could take: its defined form, logged
        canonical = chain.canonical_event(stored_mapping(location, agent_id, sequence, data))
    return canonical


def _ecs_timestamp(event: pb.Event) -> str:
    """`@timestamp` as protos.events.to_mapping writes it, with the seconds part cached.

    Unlike to_mapping it never refuses a timestamp: the store keeps what ingest accepted
    (stores written before ingest checked timestamps hold such rows too).
    """
    if not event.HasField("timestamp"):
        return ""
    ts = event.timestamp
    return f"{seconds_text(ts.seconds)}{ts.nanos // 1000:06d}Z"


# Where a row of `event_row` holds the event's sequence and action, and its protobuf bytes: last
# (also in PostgreSQL's rows, which leave the chain column out).
SEQUENCE_COLUMN, ACTION_COLUMN = 1, 4
DATA_COLUMN = -1


def event_row(agent_id: str, event: pb.Event) -> tuple[Any, ...]:
    """The events-table row of one event (column order of INSERT_EVENT), chain not yet computed.

    Columns come straight from the protobuf: building the full ECS mapping here would cost
    more than everything else ingest does.
    """
    info = event.event  # each attribute step builds a wrapper object: take it once
    return (
        agent_id,
        info.sequence,
        info.id,
        _ecs_timestamp(event),
        info.action,
        event.host.name,
        event.user.name,
        event.device.serial,
        None,
        event.SerializeToString(),
    )


def checked_row(  # noqa: PLR0917 (the fields the checker has already read)
    agent_id: str,
    event: pb.Event,
    sequence: int,
    event_id: str,
    action: str,
    seconds: int,
    nanos: int,
    data: bytes,
) -> tuple[Any, ...]:
    """`event_row` of an event whose sequence, id, action and set `@timestamp` (in range) the
    checker at the door has read already (each field of an event is read once on its way in), and
    whose bytes are `data` (as received, or serialised)."""
    return (
        agent_id,
        sequence,
        event_id,
        f"{seconds_text(seconds)}{nanos // 1000:06d}Z",
        action,
        event.host.name,
        event.user.name,
        event.device.serial,
        None,
        data,
    )


class CheckedBatch(Sequence[pb.Event]):
    """A batch of one agent's events as the ingest check passed it, with the store's row of each
    (`checked_row`, same order), so the store does not read every event's fields a second time."""

    __slots__ = ("agent_id", "events", "rows")

    def __init__(self, agent_id: str, events: Sequence[pb.Event], rows: list[tuple[Any, ...]]) -> None:
        self.agent_id = agent_id
        self.events = events
        self.rows = rows

    @overload
    def __getitem__(self, index: int) -> pb.Event: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[pb.Event]: ...

    def __getitem__(self, index: int | slice) -> pb.Event | Sequence[pb.Event]:
        return self.events[index]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[pb.Event]:
        return iter(self.events)


def batch_rows(agent_id: str, batch: Sequence[pb.Event]) -> list[tuple[Any, ...]]:
    """The rows of a batch: those the check built (`CheckedBatch`), or each event's `event_row`."""
    if isinstance(batch, CheckedBatch) and batch.agent_id == agent_id:
        return batch.rows
    return [event_row(agent_id, e) for e in batch]
