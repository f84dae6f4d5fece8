"""Replay recorded events through a policy set: what `exfilguard policy test` and the benchmarks run.

    alerts = replay(loader.load(["policies/"]), events, timezone="Europe/Berlin")

Like the collector, the engine enriches every event with device approvals, baselines and risk
(collector/behaviour/) unless `behaviour=False`; baselines are built from the replayed events
themselves, so a replay needs the weeks of history its policies' warm-up asks for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from collector.alerts.alert import RaisedAlert
from collector.behaviour.enrich import Behaviour
from collector.policy.engine import PolicyEngine
from collector.policy.model import PolicySet


def engine_for(
    policy_set: PolicySet,
    *,
    timezone: str = "UTC",
    suppression: float = 600.0,
    behaviour: bool | Behaviour = True,
    groups: Mapping[str, str] | None = None,
) -> PolicyEngine:
    """An engine as the collector builds it (with a fresh Behaviour unless told otherwise), but
    without the live collector's per-event time budget."""
    if behaviour is True:
        behaviour = Behaviour(timezone, groups)
    # No per-event time budget: a replay is offline, and a policy suspended because the machine
    # was busy for a moment would make the same events raise different alerts on another run.
    return PolicyEngine(
        policy_set,
        timezone=timezone,
        suppression_seconds=suppression,
        budget_seconds=math.inf,
        behaviour=behaviour or None,
    )


def replay(
    engine: PolicyEngine, events: Iterable[Mapping[str, Any]], *, final: bool = True
) -> list[RaisedAlert]:
    """The alerts the events raise, in order; with `final`, folded repeats are flushed at the end."""
    alerts: list[RaisedAlert] = []
    for event in events:
        alerts.extend(engine.evaluate(event))
    if final:
        alerts.extend(engine.flush(math.inf))
    return alerts
