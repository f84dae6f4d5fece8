"""An agent's health as the officer reads it (`exfilguard agents`, the console's fleet page)."""

from __future__ import annotations

import datetime as dt

from collector.store import AgentRecord

STATES = ("ok", "offline", "silent", "stopped")


def health(record: AgentRecord, silent_after: float, now: dt.datetime | None = None) -> str:
    """`stopped` after a clean agent.stop while disconnected; else `silent` past the silent-agent
    threshold (connected or not: a stuck agent is as bad as a killed one), else `offline` when
    disconnected, else `ok`; `+lost` when it reported losses."""
    now = now or dt.datetime.now(dt.UTC)
    last = record.last_heartbeat or record.last_seen
    try:
        age = (now - dt.datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        age = float("inf")
    if record.stopped and not record.connected:
        state = "stopped"
    else:
        state = "silent" if age > silent_after else ("ok" if record.connected else "offline")
    return state + ("+lost" if record.lost else "")
