"""What the collector tells the rest of itself about stored events (the policy engine subscribes here).

A listener gets the ECS mappings of events right after they are committed, each event
once (resent duplicates are not passed on), plus synthetic collector events such as
`agent.silent`. Listener failures are logged and never slow or break ingest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

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
