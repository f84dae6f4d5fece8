"""Shared builders for evidence tests: real events through the real chain formula."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from collector.evidence import export, manifest
from collector.evidence.keys import SigningKey
from protos import chain, events
from protos import exfilguard_pb2 as pb


def make_event(  # noqa: PLR0917
    agent: str,
    sequence: int,
    path: str = "",
    user: str = "alice",
    action: str = "file.copy",
    when: dt.datetime | None = None,
) -> pb.Event:
    """A file.copy event as an agent would send it (microsecond time, as agents stamp it)."""
    stamp = Timestamp()
    stamp.FromDatetime((when or dt.datetime.now(dt.UTC)).replace(tzinfo=None))
    event = events.new_event(
        action,
        timestamp=stamp,
        file=pb.File(path=path or f"/media/usb/customers-{sequence}.csv", size=1000 + sequence),
        device=pb.Device(serial="SER123", vendor="Kingston", removable=True),
        user=pb.User(id="1000", name=user),
        tags=["database"],
    )
    event.agent.id = agent
    event.event.sequence = sequence
    event.host.name = f"host-{agent}"
    return event


def chained(agent: str, count: int, start: int = 1, prev: bytes = chain.GENESIS) -> list[dict[str, Any]]:
    """Mappings carrying chain prev and hash, as StoreSource yields them."""
    out = []
    for seq in range(start, start + count):
        mapping = events.to_mapping(make_event(agent, seq, path="=cmd()" if seq == 3 else ""))
        value = chain.link(prev, mapping)
        out.append({**mapping, "exfilguard.chain.prev": prev.hex(), "exfilguard.chain.hash": value.hex()})
        prev = value
    return out


def write(
    records: list[dict[str, Any]], path: Path, fmt: export.Format, key: SigningKey, *, csv_child: bool = False
) -> dict[str, Any]:
    """Export records to `path` with a signed manifest beside it; returns the manifest."""
    with path.open("wb") as out:
        result = export.write_export(records, out, fmt, csv_child=csv_child)
    doc = manifest.build(result, path.name, {}, key)
    manifest.write(doc, manifest.path_for(path))
    return doc


def lines(path: Path) -> list[bytes]:
    """The export's lines, newline kept."""
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, content: list[bytes]) -> None:
    """Replace the export's bytes (the tamperer's move)."""
    path.write_bytes(b"".join(content))
    os.utime(path)
