"""What the collector tells the rest of itself about stored events (the policy process subscribes here).

A listener gets events right after they are committed, each event once (resent duplicates are
not passed on), plus synthetic collector events such as `agent.silent` as mappings. A listener
with `on_stored(events, data)` gets the stored protobuf events as they are, with the bytes the
store wrote for each (the policy process passes those on and converts or serializes nothing); any
other gets their ECS mappings. A listener may also have
`async open()` (awaited before the collector serves) and `async aclose()` (awaited after the
last batch is stored, at stop). Listener failures are logged and never break ingest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from protos import exfilguard_pb2 as pb
from protos.events import to_mapping

log = logging.getLogger("exfilguard.collector.listeners")

Mapping = dict[str, Any]

# event.action of the synthetic event raised when an agent stops sending heartbeats.
AGENT_SILENT = "agent.silent"


@runtime_checkable
class EventListener(Protocol):
    """Receives newly stored events (and collector-made events such as agent.silent)."""

    async def on_events(self, mappings: list[Mapping]) -> None:
        """Called on the collector's event loop after the events are committed; must not block."""


async def notify(listeners: Sequence[EventListener], mappings: list[Mapping]) -> None:
    """Pass mappings to every listener in turn; a failing listener is logged and skipped."""
    if not mappings:
        return
    for listener in listeners:
        try:
            await listener.on_events(mappings)
        except Exception:
            log.exception("event listener %s failed on %d event(s)", type(listener).__name__, len(mappings))


async def notify_stored(
    listeners: Sequence[EventListener], events: Sequence[pb.Event], data: Sequence[bytes]
) -> None:
    """Pass newly stored events on: as they are, with their stored bytes (`data`, same order), to
    `on_stored`; as mappings (built once) to the rest."""
    if not events:
        return
    mappings: list[Mapping] | None = None
    for listener in listeners:
        try:
            on_stored = getattr(listener, "on_stored", None)
            if on_stored is not None:
                await on_stored(events, data)
                continue
            if mappings is None:
                mappings = [to_mapping(e) for e in events]
            await listener.on_events(mappings)
        except Exception:
            log.exception("event listener %s failed on %d event(s)", type(listener).__name__, len(events))
