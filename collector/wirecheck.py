"""What the collector accepts on an agent stream: every message is checked here before anything is stored.

A stored event is read again and again (the sealer's hash chain, exports, the policy engine,
alerts, PostgreSQL text columns), so anything one of those readers cannot take is refused at
the door, with INVALID_ARGUMENT and a message naming the event (index, sequence, event.id) and
the field. Nothing of a refused batch is stored; the stream ends; other streams go on.

    parse_agent_message(raw)   the stream's request deserializer: bytes -> AgentMessage, WireBatch
                               (a batch, with its events' bytes as sent) or Malformed
    hello_problem(hello)       why a hello is refused, or None
    heartbeat_problem(beat)    why a heartbeat is refused, or None
    batch_problem(agent, events, ceiling)   why a batch is refused, or None
    batch_refusal(agent, events, ceiling)   the same with the refused event's sequence (a Refusal)
    checked_batch(agent, events, ceiling, data)   a Refusal, or the batch with the store's rows (CheckedBatch)

A refusal that is about one event carries its sequence in the trailing metadata
`protos.wire.REFUSED_SEQUENCE_KEY`, so the agent can set that event aside instead of resending it forever.

Limits (fixed, documented in docs/collector.md):
  - timestamps (every Timestamp of the event model, found by walking the .proto, so fields
    added later are covered: `@timestamp`, `exfilguard.gap.*`, `exfilguard.late_window.*`, ...):
    nanos in 0..999,999,999 and the time within 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z
    (what every reader can format);
    `@timestamp` is required;
  - sequences: 1 .. 2^63-2 (a store integer, and the next one must still fit), and at most
    `MAX_SEQUENCE_AHEAD` above what the collector acknowledged (a jump beyond it would leave
    a hole the watermark could never cross);
  - `event.id` and `event.action`: present, at most 128 characters, printable;
  - no NUL character in any string (PostgreSQL text cannot hold one, and every alert,
    CSV cell and registry row would carry it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from collector.store.rows import CheckedBatch, checked_row, event_row
from protos import exfilguard_pb2 as pb

MAX_BATCH_EVENTS = 10_000  # an agent flushes at 500; far more is a broken or hostile agent
MAX_AGENT_ID = 128
MAX_SEQUENCE = (1 << 63) - 2  # uint64 on the wire, signed 64-bit in the store; the next must fit too
MAX_SEQUENCE_AHEAD = 1 << 32  # above the acknowledged watermark; an agent's spool holds far fewer
MAX_TEXT = 128  # event.id, event.action
MAX_HELLO_TEXT = 256  # hostname, version, config_version, capabilities
MIN_SECONDS = 0  # 1970-01-01T00:00:00Z
MAX_SECONDS = int(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())
_NANOS = 1_000_000_000


@dataclass(frozen=True)
class Malformed:
    """What the deserializer hands the servicer for bytes it must refuse (never raised: gRPC
    would log a traceback per message and answer UNKNOWN)."""

    problem: str
    reason: str  # metrics label (collector/metrics.py)
    sequence: int = 0  # the refused event's sequence when the problem is in one event


@dataclass(frozen=True)
class Refusal:
    """Why a batch is refused; `sequence` names the event at fault (0: the batch as a whole)."""

    problem: str
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class WireBatch:
    """A batch as received: the parsed message, and each event's bytes as the agent sent them
    (`event_bytes`; None when they do not split plainly, and the store serialises the events)."""

    message: pb.AgentMessage
    data: list[bytes] | None


def parse_agent_message(raw: bytes) -> pb.AgentMessage | WireBatch | Malformed:
    """Request deserializer of the Ingest stream: an AgentMessage (a batch as a WireBatch), or
    Malformed saying why not."""
    try:
        message = pb.AgentMessage.FromString(raw)
    except DecodeError as exc:
        return Malformed(f"malformed AgentMessage ({len(raw)} bytes): {exc}", "malformed")
    # NUL can only be in a string if a zero byte is in the encoding; most messages have none,
    # so the walk over every string runs only for the few that do.
    if b"\x00" in raw:
        where = _nul_field(message, "")
        if where is not None:
            return Malformed(f"{_locate(message, where)}: contains a NUL character", "bad_text",
                             _sequence_at(message, where))
    if message.HasField("batch"):
        return WireBatch(message, event_bytes(raw, len(message.batch.events)))
    return message


def _split_batch_class() -> Callable[[bytes], Any]:
    """The parser of an AgentMessage whose batch's events are read as bytes (field numbers and wire
    types from the .proto, so both parsings read the same fields the same way)."""
    proto = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="exfilguard/wire_split.proto", package="exfilguard.wire")
    file.syntax = "proto3"
    batch = file.message_type.add(name="SplitBatch")
    events = pb.EventBatch.DESCRIPTOR.fields_by_name["events"]
    batch.field.add(name="events", number=events.number, type=proto.TYPE_BYTES, label=proto.LABEL_REPEATED)
    message = file.message_type.add(name="SplitMessage")
    field = pb.AgentMessage.DESCRIPTOR.fields_by_name["batch"]
    message.field.add(name="batch", number=field.number, type=proto.TYPE_MESSAGE, label=proto.LABEL_OPTIONAL,
                      type_name=f".{file.package}.{batch.name}")  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    split: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{message.name}"))
    return cast(Callable[[bytes], Any], split.FromString)


_split_batch = _split_batch_class()


def event_bytes(raw: bytes, count: int) -> list[bytes] | None:
    """The bytes of each of a batch message's `count` events, cut from the message as received.

    The store keeps these rather than serialising each parsed event again (half a microsecond an
    event, in the process every stream shares). The message is parsed a second time with each
    event read as bytes (upb's C: 0.03 us an event, a loop over the bytes in Python took 0.26):
    both parsings merge a batch sent in parts, and skip the same unknown fields, so these are
    the bytes of the very events the message parsed to, unless a batch was cleared by another
    body in between (hello or heartbeat after a batch, then a batch again), which leaves other
    events than `count` (None: the store serialises the parsed events).
    """
    try:
        out: list[bytes] = _split_batch(raw).batch.events[:]
    except DecodeError:
        return None
    return out if len(out) == count else None


def _nul_field(message: Message, prefix: str) -> str | None:
    """The dotted path of the first string holding NUL, or None."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            texts = value if field.is_repeated else (value,)
            if any("\x00" in text for text in texts):
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = list(value) if field.is_repeated else [value]
            for index, item in enumerate(items):
                inner = f"{name}[{index}]." if field.is_repeated else name + "."
                found = _nul_field(item, inner)
                if found is not None:
                    return found
    return None


def _locate(message: pb.AgentMessage, path: str) -> str:
    """Name a field path inside a message the way refusals do (the event by index, sequence, id)."""
    head = "batch.events["
    if not path.startswith(head):
        return path
    index_text, _, rest = path[len(head):].partition("].")
    event = message.batch.events[int(index_text)]
    return f"{_event_name(int(index_text), event)}: {_ecs_name(rest)}"


def _sequence_at(message: pb.AgentMessage, path: str) -> int:
    """The sequence of the batch event a field path lies in, or 0."""
    head = "batch.events["
    if not path.startswith(head):
        return 0
    sequence: int = message.batch.events[int(path[len(head):].partition("]")[0])].event.sequence
    return sequence


def _ecs_name(path: str) -> str:
    return "@timestamp" + path[len("timestamp"):] if path.startswith("timestamp") else path


def _event_name(index: int, event: pb.Event) -> str:
    info = event.event
    return f"event sequence {info.sequence} (#{index} in batch, event.id {info.id[:MAX_TEXT]!r})"


def hello_problem(hello: pb.Hello) -> str | None:
    """Why a hello is unacceptable, or None."""
    agent_id = hello.agent_id
    if not agent_id:
        return "hello.agent_id is empty"
    if len(agent_id) > MAX_AGENT_ID:
        return f"hello.agent_id is longer than {MAX_AGENT_ID} characters"
    if not agent_id.isprintable() or agent_id.strip() != agent_id:
        return "hello.agent_id contains control characters or surrounding spaces"
    for name in ("hostname", "version", "config_version"):
        if len(getattr(hello, name)) > MAX_HELLO_TEXT:
            return f"hello.{name} is longer than {MAX_HELLO_TEXT} characters"
    if len(hello.capabilities) > 64 or any(len(c) > MAX_HELLO_TEXT for c in hello.capabilities):
        return f"hello.capabilities: more than 64, or one longer than {MAX_HELLO_TEXT} characters"
    for name in ("last_acked_sequence", "next_sequence"):
        if getattr(hello, name) > MAX_SEQUENCE + 1:
            return f"hello.{name} {getattr(hello, name)} is beyond the largest sequence ({MAX_SEQUENCE})"
    return None


def heartbeat_problem(heartbeat: pb.Heartbeat) -> str | None:
    """Why a heartbeat is unacceptable, or None."""
    if heartbeat.backlog > MAX_SEQUENCE:
        return f"heartbeat.backlog {heartbeat.backlog} is beyond {MAX_SEQUENCE}"
    if len(heartbeat.config_version) > MAX_HELLO_TEXT:
        return f"heartbeat.config_version is longer than {MAX_HELLO_TEXT} characters"
    if heartbeat.HasField("sent"):
        problem = timestamp_problem(heartbeat.sent)
        if problem:
            return f"heartbeat.sent: {problem}"
    return None


def timestamp_problem(ts: Timestamp) -> str | None:
    """Why a google.protobuf.Timestamp is outside what every reader can format, or None."""
    seconds, nanos = ts.seconds, ts.nanos
    if not 0 <= nanos < _NANOS:
        return f"nanos {nanos} outside 0..999999999"
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        return f"seconds {seconds} outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z"
    return None


# Where Timestamps sit in the event model, read off the .proto (so a field added later is checked
# too): field name -> (repeated, subtree), subtree None for a Timestamp. Only branches that lead
# to a Timestamp are kept.
_Tree = dict[str, tuple[bool, "_Tree | None"]]


def _timestamp_tree(descriptor: Any) -> _Tree:
    tree: _Tree = {}
    for field in descriptor.fields:
        message = field.message_type
        if message is None:
            continue
        if message.full_name == "google.protobuf.Timestamp":
            tree[field.name] = (bool(field.is_repeated), None)
        elif sub := _timestamp_tree(message):
            tree[field.name] = (bool(field.is_repeated), sub)
    return tree


_OPTIONAL_TIMESTAMPS = {k: v for k, v in _timestamp_tree(pb.Event.DESCRIPTOR).items() if k != "timestamp"}


# For the fast path: (field, repeated, its children that lead to Timestamps or None). An event
# that sets any of them (gaps, late windows: rare) takes the slow path.
_GUARDS = [
    (name, repeated, None if sub is None else [(n, r) for n, (r, _) in sub.items()])
    for name, (repeated, sub) in _OPTIONAL_TIMESTAMPS.items()
]


def _compile_guard() -> Callable[[pb.Event], bool]:
    """Whether an event sets any of _GUARDS, written out as straight-line Python at import: it runs
    for every event ingested, and a loop over the guards cost twice what the reads themselves do."""
    lines = ["def optional_timestamp_set(event):"]
    for name, repeated, children in _GUARDS:
        if repeated:
            lines.append(f" if len(event.{name}): return True")
        elif children is None:
            lines.append(f" if event.HasField({name!r}): return True")
        else:
            # no HasField of the message first: an unset one reads as empty, and most events set it
            lines.append(f" inner = event.{name}")
            for child, child_repeated in children:
                test = f"len(inner.{child})" if child_repeated else f"inner.HasField({child!r})"
                lines.append(f" if {test}: return True")
    lines.append(" return False")
    scope: dict[str, Any] = {}
    exec("\n".join(lines), scope)  # noqa: S102 (source written above from the descriptors)
    function: Callable[[pb.Event], bool] = scope["optional_timestamp_set"]
    return function


_optional_timestamp_set = _compile_guard()


def _timestamps_problem(message: Message, tree: _Tree, prefix: str) -> str | None:
    """'path: problem' of the first bad Timestamp under `message`, or None; cheap when none is set."""
    for name, (repeated, sub) in tree.items():
        if repeated:
            values: list[Any] = list(getattr(message, name))
            names = [f"{prefix}{name}[{i}]" for i in range(len(values))]
        elif message.HasField(name):
            values, names = [getattr(message, name)], [prefix + name]
        else:
            continue
        for value, path in zip(values, names, strict=True):
            problem = timestamp_problem(value) if sub is None else _timestamps_problem(value, sub, path + ".")
            if problem:
                return f"{path}: {problem}" if sub is None else problem
    return None


def event_problem(event: pb.Event) -> str | None:
    """Why one event cannot be stored, as 'field: problem', or None (sequence and agent are the batch's)."""
    info = event.event
    for name, text in (("event.id", info.id), ("event.action", info.action)):
        if not text:
            return f"{name} is empty"
        if len(text) > MAX_TEXT:
            return f"{name} is longer than {MAX_TEXT} characters"
        if not text.isprintable():
            return f"{name} contains control characters"
    if not event.HasField("timestamp"):
        return "@timestamp is missing"
    problem = timestamp_problem(event.timestamp)
    if problem:
        return f"@timestamp: {problem}"
    return _timestamps_problem(event, _OPTIONAL_TIMESTAMPS, "")


def batch_problem(agent_id: str, events: Sequence[pb.Event], ceiling: int = MAX_SEQUENCE) -> str | None:
    """Why a batch is unacceptable from this agent's stream, or None.

    `ceiling` is the highest sequence acceptable now (the acknowledged watermark plus
    MAX_SEQUENCE_AHEAD, at most MAX_SEQUENCE).
    """
    refusal = batch_refusal(agent_id, events, ceiling)
    return None if refusal is None else refusal.problem


def batch_refusal(agent_id: str, events: Sequence[pb.Event], ceiling: int = MAX_SEQUENCE) -> Refusal | None:
    """Why a batch is unacceptable, with the sequence of the event at fault; None when it is fine."""
    checked = checked_batch(agent_id, events, ceiling)
    return checked if isinstance(checked, Refusal) else None


def checked_batch(
    agent_id: str,
    events: Sequence[pb.Event],
    ceiling: int = MAX_SEQUENCE,
    data: Sequence[bytes] | None = None,
) -> CheckedBatch | Refusal:
    """The batch with the store's row of each event (built from the fields the checks read, so the
    store reads none of them again), or why it is unacceptable (`batch_refusal`). `data`: each
    event's bytes as received (`WireBatch.data`), stored as they are."""
    if len(events) > MAX_BATCH_EVENTS:
        return Refusal(f"batch of {len(events)} events exceeds the limit of {MAX_BATCH_EVENTS}")
    ceiling = min(ceiling, MAX_SEQUENCE)
    rows: list[tuple[Any, ...]] = []
    add = rows.append
    for index, event in enumerate(events):
        # The common case in one expression (this runs for every event ingested); anything
        # unusual takes the slow path below, which names the problem.
        info = event.event
        ts = event.timestamp
        sequence, event_id, action = info.sequence, info.id, info.action
        seconds, nanos = ts.seconds, ts.nanos
        if (
            0 < sequence <= ceiling
            and event.agent.id == agent_id
            and 0 < len(event_id) <= MAX_TEXT
            and 0 < len(action) <= MAX_TEXT
            and 0 <= nanos < _NANOS
            and MIN_SECONDS < seconds <= MAX_SECONDS  # 0 also when unset: the slow path tells
            and event_id.isprintable()
            and action.isprintable()
            and not _optional_timestamp_set(event)
        ):
            raw = event.SerializeToString() if data is None else data[index]
            add(checked_row(agent_id, event, sequence, event_id, action, seconds, nanos, raw))
            continue
        problem = _event_batch_problem(index, event, agent_id, ceiling)
        if problem:
            return Refusal(problem, sequence)
        add(event_row(agent_id, event))
    return CheckedBatch(agent_id, events, rows)


def _event_batch_problem(index: int, event: pb.Event, agent_id: str, ceiling: int) -> str | None:
    """The slow path of batch_problem for one event: what exactly is wrong, or None."""
    sequence = event.event.sequence
    if sequence == 0:
        return f"{_event_name(index, event)}: event.sequence must be > 0"
    if sequence > ceiling:
        if sequence > MAX_SEQUENCE:
            why = f"larger than {MAX_SEQUENCE} (a store integer)"
        else:
            acked = ceiling - MAX_SEQUENCE_AHEAD
            why = f"more than {MAX_SEQUENCE_AHEAD} above the acknowledged sequence {acked}"
        return f"{_event_name(index, event)}: event.sequence {sequence} is {why}"
    if event.agent.id != agent_id:
        return (
            f"{_event_name(index, event)}: agent.id {event.agent.id[:MAX_AGENT_ID]!r} does not match "
            f"the stream's hello agent id {agent_id!r}"
        )
    problem = event_problem(event)
    return f"{_event_name(index, event)}: {problem}" if problem else None
