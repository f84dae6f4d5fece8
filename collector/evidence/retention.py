"""Retention: prune old events by age or by store size, keeping every chain verifiable.

Only a prefix of an agent's chain is ever pruned, and the same transaction records a
checkpoint (agent, last pruned sequence, chain value there), so an export of what remains
starts from the checkpoint's chain value and still verifies. Pruning stops:
  - before the agent's chain head (ingest continues the chain from it),
  - before the first event an open alert cites, unless `include_alerted` (an investigation
    must not lose its evidence because a timer fired). "Open" is the alert's triage status
    (collector/store/triage.py; the ledgers' `protected()` read it), set by `exfilguard alerts`.
Size is the SQLite file's pages in use; SQLite reuses freed pages, so the file stops
growing rather than shrinking (run VACUUM offline to give the space back to the OS). On
PostgreSQL it is the bytes of the live event and alert rows; autovacuum makes the space of
pruned rows reusable.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from collector.evidence.errors import RetentionError
from collector.store.ledger import Checkpoint, Ledger, PruneRefused
from common.ecstime import ecs_time

_SIZE_PASSES = 8


@dataclass
class PruneReport:
    """What a prune did."""

    deleted: int = 0
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    held_by_alerts: list[str] = field(default_factory=list)  # agents where an open alert stopped pruning
    used_before: int = 0
    used_after: int = 0


def prune(
    ledger: Ledger,
    older_than: dt.timedelta | None = None,
    max_size: int | None = None,
    include_alerted: bool = False,
    now: dt.datetime | None = None,
) -> PruneReport:
    """Prune by age (events older than `older_than`) and/or until the store is at most `max_size`."""
    if older_than is None and max_size is None:
        raise RetentionError("give an age (older_than) or a size (max_size)")
    report = PruneReport(used_before=ledger.used_bytes())
    if older_than is not None:
        cutoff = ecs_time((now or dt.datetime.now(dt.UTC)) - older_than)
        _prune_before(ledger, cutoff, include_alerted, report)
    if max_size is not None:
        for _ in range(_SIZE_PASSES):
            used, count = ledger.used_bytes(), ledger.count()
            if used <= max_size or count == 0:
                break
            excess = math.ceil((used - max_size) / (used / count) * 1.05) + 1
            cutoff = ledger.time_at_offset(excess) or "9999"
            if _prune_before(ledger, cutoff, include_alerted, report) == 0:
                break  # what is left is held by chain heads or open alerts
    report.used_after = ledger.used_bytes()
    return report


def _prune_before(ledger: Ledger, cutoff: str, include_alerted: bool, report: PruneReport) -> int:
    """Prune, per agent, the prefix of events before `cutoff`; returns events deleted."""
    protected = {} if include_alerted else ledger.protected()
    deleted = 0
    for agent in ledger.chains():
        limit = agent.sealed - 1
        first_kept = ledger.first_sequence_since(agent.agent_id, cutoff)
        if first_kept is not None:
            limit = min(limit, first_kept - 1)
        held = protected.get(agent.agent_id)
        if held is not None and held - 1 < limit:
            limit = held - 1
            if agent.agent_id not in report.held_by_alerts:
                report.held_by_alerts.append(agent.agent_id)
        if limit <= agent.checkpoint:
            continue
        before = ledger.checkpoint(agent.agent_id)
        try:
            cp = ledger.prune_through(agent.agent_id, limit)
        except PruneRefused as exc:
            raise RetentionError(exc.reason) from exc
        n = cp.pruned_total - (before.pruned_total if before else 0)
        deleted += n
        report.checkpoints[agent.agent_id] = cp
    report.deleted += deleted
    return deleted
