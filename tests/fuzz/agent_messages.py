"""Hypothesis strategies for what an agent (or anyone on the agent port) can send: streams of AgentMessages.

Two families, both ending as the exact bytes of each message of one stream:

- `structured_streams`: a hello and then batches, heartbeats, empty messages or second hellos,
  built from a realistic event (tests.helpers.make_event) with a few of its fields set to drawn
  values. The fields and their types are read off the .proto, so every field of the event model
  is reached, with the edge values of its type (int64 limits, uint64 beyond int64, timestamps
  with negative nanos or in year 0 or 10000, sequences at 0, 2^63-1 and beyond, strings with
  NUL, control characters, formulas, non-BMP text).
- `raw_streams`: a valid hello, then a valid message's bytes mutated (bits flipped, bytes set,
  inserted, deleted, a cut, a slice repeated), or bytes drawn from nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from protos import exfilguard_pb2 as pb
from tests.helpers import make_event

INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)


@dataclass(frozen=True)
class FuzzStream:
    """One input: the bytes of each message of one stream, in order, and how it was made."""

    agent_id: str
    messages: tuple[bytes, ...]
    family: str  # "structured" or "raw"


def _edged(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [low, high, 0, 1, -1, low + 1, high - 1, (1 << 63) - 2, 1 << 63, 1 << 32]
    return st.one_of(st.integers(low, high), st.sampled_from([e for e in edges if low <= e <= high]))


TEXTS: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        ["", "\x00", "a\x00b", "=1+1", "x\n=1+1", "\r\n", "\t", "'", '"', "\\", "é", "\U0001f600", "\u202e",
         "/srv/db/" + "x" * 300, "a" * 129, " padded ", "\x7f", "\ud7ff"]
    ),
)

_TYPES: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT64: _edged(*INT64),
    FieldDescriptor.TYPE_SINT64: _edged(*INT64),
    FieldDescriptor.TYPE_SFIXED64: _edged(*INT64),
    FieldDescriptor.TYPE_UINT64: _edged(*UINT64),
    FieldDescriptor.TYPE_FIXED64: _edged(*UINT64),
    FieldDescriptor.TYPE_INT32: _edged(*INT32),
    FieldDescriptor.TYPE_SINT32: _edged(*INT32),
    FieldDescriptor.TYPE_SFIXED32: _edged(*INT32),
    FieldDescriptor.TYPE_UINT32: _edged(*UINT32),
    FieldDescriptor.TYPE_FIXED32: _edged(*UINT32),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: TEXTS,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
}

# Timestamps get values every reader meets: now-ish, the epoch, year 0 and 10000, and worse.
_SECONDS = st.one_of(
    st.integers(1_600_000_000, 1_900_000_000),
    st.sampled_from([0, -1, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800]),
    _edged(*INT64),
)
_NANOS = st.one_of(st.sampled_from([-1, 1_000_000_000, *INT32]), st.integers(0, 999_999_999), _edged(*INT32))


def _leaf_paths(descriptor: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, field) of every scalar leaf of a message type; repeated messages get one element."""
    leaves: list[tuple[tuple[str, ...], Any]] = []
    for field in descriptor.fields:
        path = (*prefix, field.name)
        if field.message_type is None:
            leaves.append((path, field))
        else:
            leaves.extend(_leaf_paths(field.message_type, (*path, "[]") if field.is_repeated else path))
    return leaves


EVENT_LEAVES = _leaf_paths(pb.Event.DESCRIPTOR)
HELLO_LEAVES = _leaf_paths(pb.Hello.DESCRIPTOR)
HEARTBEAT_LEAVES = _leaf_paths(pb.Heartbeat.DESCRIPTOR)


def _value_for(path: tuple[str, ...], field: Any) -> st.SearchStrategy[Any]:
    if path[-2:-1] and field.containing_type.full_name == "google.protobuf.Timestamp":
        return _SECONDS if field.name == "seconds" else _NANOS
    return _TYPES[field.type]


def _set_leaf(message: Message, path: tuple[str, ...], field: Any, value: Any) -> None:
    holder: Any = message
    steps = list(path[:-1])
    while steps:
        step = steps.pop(0)
        if steps and steps[0] == "[]":
            steps.pop(0)
            holder = getattr(holder, step).add()
        else:
            holder = getattr(holder, step)
    if field.is_repeated:
        getattr(holder, path[-1]).append(value)
    else:
        setattr(holder, path[-1], value)


# Fields every reader leans on, picked as often as all the others together.
_HOT = frozenset({
    ("timestamp", "seconds"), ("timestamp", "nanos"), ("event", "sequence"), ("event", "id"),
    ("event", "action"), ("agent", "id"), ("exfilguard", "gap", "first", "nanos"),
    ("exfilguard", "gap", "last", "seconds"), ("exfilguard", "gap", "lost"), ("file", "path"),
    ("file", "size"), ("host", "name"), ("user", "name"), ("device", "serial"),
})
_EVENT_HOT = [leaf for leaf in _leaf_paths(pb.Event.DESCRIPTOR) if leaf[0] in _HOT]


@st.composite
def _edits(draw: st.DrawFn, leaves: list[tuple[tuple[str, ...], Any]], most: int) -> list[tuple[Any, ...]]:
    hot = [leaf for leaf in _EVENT_HOT if leaf in leaves]
    pick = st.one_of(st.sampled_from(hot), st.sampled_from(leaves)) if hot else st.sampled_from(leaves)
    chosen = draw(st.lists(pick, max_size=most))
    return [(path, field, draw(_value_for(path, field))) for path, field in chosen]


@st.composite
def events(draw: st.DrawFn, agent_id: str, sequence: int, edits: int = 4) -> pb.Event:
    """A realistic event of `agent_id`, with up to `edits` of its fields set to drawn values."""
    action = draw(st.sampled_from(["file.read", "file.copy", "agent.gap", "x"]))
    event = make_event(agent_id, sequence, action)
    for path, field, value in draw(_edits(EVENT_LEAVES, edits)):
        _set_leaf(event, path, field, value)
    return event


@st.composite
def _batch(draw: st.DrawFn, agent_id: str, first: int) -> pb.AgentMessage:
    count = draw(st.integers(1, 5))
    odd = st.sampled_from([0, 1, first + 2, (1 << 63) - 2, (1 << 32) + first])
    start = draw(st.one_of(st.just(first), odd))
    # One event edited, the others mostly clean: a batch is refused for its first bad event, so
    # several bad ones would hide each other.
    edited = draw(st.integers(0, count - 1))
    last = UINT64[1]  # a uint64 on the wire: sequences past it stay at it
    batch = []
    for i in range(count):
        edits = 4 if i == edited else draw(st.sampled_from([0, 0, 1]))
        batch.append(draw(events(agent_id, min(start + i, last), edits)))
    return pb.AgentMessage(batch=pb.EventBatch(events=batch))


@st.composite
def _hello(draw: st.DrawFn, agent_id: str, edits: int) -> pb.AgentMessage:
    hello = pb.Hello(agent_id=agent_id, version="0.1.0", hostname="ws-fuzz")
    for path, field, value in draw(_edits(HELLO_LEAVES, edits)):
        if path != ("agent_id",) or draw(st.integers(0, 3)) == 0:  # mostly keep the stream's own id
            _set_leaf(hello, path, field, value)
    return pb.AgentMessage(hello=hello)


@st.composite
def _heartbeat(draw: st.DrawFn) -> pb.AgentMessage:
    beat = pb.Heartbeat(backlog=3)
    for path, field, value in draw(_edits(HEARTBEAT_LEAVES, 3)):
        _set_leaf(beat, path, field, value)
    return pb.AgentMessage(heartbeat=beat)


@st.composite
def structured_streams(draw: st.DrawFn, agent_id: str) -> FuzzStream:
    """A hello (sometimes edited), then up to four messages, mostly batches continuing the sequence."""
    messages = [draw(_hello(agent_id, draw(st.sampled_from([0, 0, 0, 1, 2]))))]
    next_sequence = 1
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["batch", "batch", "batch", "heartbeat", "empty", "hello"]))
        if kind == "batch":
            message = draw(_batch(agent_id, next_sequence))
            next_sequence = min(message.batch.events[-1].event.sequence + 1, UINT64[1])
        elif kind == "heartbeat":
            message = draw(_heartbeat())
        elif kind == "hello":
            message = draw(_hello(agent_id, 1))
        else:
            message = pb.AgentMessage()
        messages.append(message)
    return FuzzStream(agent_id, tuple(m.SerializeToString() for m in messages), "structured")


@st.composite
def _mutated(draw: st.DrawFn, blob: bytes) -> bytes:
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def _fixed_event(agent_id: str, sequence: int) -> pb.Event:
    """A realistic event whose bytes depend on its arguments only (mutation positions are drawn
    against its length, and hypothesis needs the same draws to mean the same input)."""
    event = make_event(agent_id, sequence)
    event.event.id = f"{agent_id}-{sequence:08d}"
    event.timestamp.seconds, event.timestamp.nanos = 1_800_000_000 + sequence, 123_456_000
    return event


@st.composite
def raw_streams(draw: st.DrawFn, agent_id: str) -> FuzzStream:
    """`agent_id` must have the same length for every input of one hypothesis run (see _fixed_event).

    A valid hello, then one to three messages: a valid batch or heartbeat with bytes mutated, or noise."""
    hello = pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, version="0.1.0", hostname="ws-fuzz"))
    messages = [hello.SerializeToString()]
    sequence = 1
    for _ in range(draw(st.integers(1, 3))):
        source = draw(st.sampled_from(["batch", "batch", "heartbeat", "noise"]))
        if source == "noise":
            messages.append(draw(st.binary(max_size=64)))
            continue
        if source == "batch":
            count = draw(st.integers(1, 3))
            batch = [_fixed_event(agent_id, sequence + i) for i in range(count)]
            sequence += count
            valid = pb.AgentMessage(batch=pb.EventBatch(events=batch))
        else:
            valid = pb.AgentMessage(heartbeat=pb.Heartbeat(backlog=sequence))
        messages.append(draw(_mutated(valid.SerializeToString())))
    return FuzzStream(agent_id, tuple(messages), "raw")


def _seed(agent_id: str, mutate: Any) -> tuple[bytes, ...]:
    hello = pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, version="0.1.0", hostname="ws-fuzz"))
    batch = [_fixed_event(agent_id, s) for s in (1, 2, 3)]
    message = pb.AgentMessage(batch=pb.EventBatch(events=batch))
    mutate(message)
    return hello.SerializeToString(), message.SerializeToString()


def seed_streams(agent_id: str) -> dict[str, FuzzStream]:
    """Inputs that broke the collector before (issue 11), sent first by every run: all must be refused."""

    def setter(path: str, value: Any) -> Any:
        def mutate(message: pb.AgentMessage) -> None:
            *parents, last = path.split(".")
            holder: Any = message.batch.events[1]
            for name in parents:
                holder = getattr(holder, name)
            setattr(holder, last, value)

        return mutate

    cases = {
        "nanos-negative": setter("timestamp.nanos", -1),
        "year-0": setter("timestamp.seconds", -62_135_596_801),
        "year-10000": setter("timestamp.seconds", 253_402_300_800),
        "gap-last-nanos": setter("exfilguard.gap.last.nanos", 1_000_000_000),
        "late-window-year-0": setter("exfilguard.late_window.start.seconds", -62_135_596_801),
        "nul-in-path": setter("file.path", "/srv/db/a\x00b"),
        "sequence-2^63-1": setter("event.sequence", (1 << 63) - 1),
        "sequence-2^64-1": setter("event.sequence", (1 << 64) - 1),
    }
    seeds = {name: FuzzStream(agent_id, _seed(agent_id, mutate), "seed") for name, mutate in cases.items()}
    hello = pb.AgentMessage(hello=pb.Hello(agent_id=agent_id)).SerializeToString()
    backlog = pb.AgentMessage(heartbeat=pb.Heartbeat(backlog=(1 << 64) - 1)).SerializeToString()
    seeds["heartbeat-backlog-2^64-1"] = FuzzStream(agent_id, (hello, backlog), "seed")
    seeds["garbage"] = FuzzStream(agent_id, (hello, b"\x12\x05\xff\xff\xff"), "seed")
    return seeds
