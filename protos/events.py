"""The one conversion from a protobuf `Event` to the dotted ECS mapping.

Policies, alerts and exports all read events through `to_mapping`; nothing else
walks protobuf fields, so the `.proto` file stays the only declaration of the model.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from protos import exfilguard_pb2 as pb

Event = pb.Event

# protobuf cannot name a field "@timestamp"; ECS does.
_RENAMED = {"timestamp": "@timestamp"}

Mapping = dict[str, Any]


def timestamp_to_iso(ts: Timestamp) -> str:
    """ECS form of a timestamp: UTC, microseconds, trailing Z."""
    moment = dt.datetime.fromtimestamp(ts.seconds, tz=dt.UTC).replace(microsecond=ts.nanos // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_mapping(event: Message) -> Mapping:
    """Flatten an event to `{"@timestamp": ..., "event.action": ..., "file.size": ...}`.

    Only fields that are set appear; repeated scalars become lists, repeated
    messages lists of flat dicts.
    """
    out: Mapping = {}
    _flatten(event, "", out)
    return out


def _flatten(message: Message, prefix: str, out: Mapping) -> None:
    for field, value in message.ListFields():
        name = prefix + field.name if prefix else _RENAMED.get(field.name, field.name)
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            out[name] = timestamp_to_iso(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_repeated(field):
                out[name] = [to_mapping(item) for item in value]
            else:
                _flatten(value, name + ".", out)
        elif _is_repeated(field):
            out[name] = list(value)
        else:
            out[name] = value


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def now() -> Timestamp:
    """The current time as a protobuf Timestamp (UTC, microsecond precision)."""
    ts = Timestamp()
    moment = dt.datetime.now(dt.UTC)
    ts.FromDatetime(moment)
    ts.nanos = (ts.nanos // 1000) * 1000
    return ts


def new_event(action: str, **fields: Any) -> pb.Event:
    """A fresh event with id, time, host and action set; sequence and agent come from the spool.

    `fields` are keyword arguments for `pb.Event` (e.g. file=pb.File(path=...)).
    """
    event = pb.Event(**fields)
    event.event.id = str(uuid.uuid4())
    event.event.action = action
    event.event.kind = event.event.kind or "event"
    if not event.HasField("timestamp"):
        event.timestamp.CopyFrom(now())
    if not event.host.name:
        event.host.name = socket.gethostname()
    return event
