"""`exfilguard prune`: retention by age or size; records a checkpoint so chains stay verifiable.

Exit codes: 0 done (also when nothing was old enough); 2 usage, configuration or store error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from admin import terminal
from collector import config as collector_config
from collector.evidence import retention
from common import units
from common.errors import ExfilGuardError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `prune`."""
    what = "delete old events (by age or store size), keeping the hash chains verifiable"
    p = terminal.command(sub, "prune", what, __doc__ + "\n" + (retention.__doc__ or ""))
    p.add_argument(
        "--config", default=None, help="collector.yaml (default $EXFILGUARD_CONFIG or /etc/exfilguard)"
    )
    p.add_argument("--older-than", help="prune events older than this (e.g. 90d, 12h)")
    p.add_argument("--max-size", help="prune oldest events until the store uses at most this (e.g. 10GiB)")
    p.add_argument("--include-alerted", action="store_true", help="also prune events that open alerts cite")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prune; see the module docstring for exit codes."""
    from collector.store.ledger import open_ledger

    if not args.older_than and not args.max_size:
        print("exfilguard prune: give --older-than AGE and/or --max-size SIZE", file=sys.stderr)
        return 2
    try:
        # An age needs its unit: a bare "90" is more likely days than the seconds it would prune to.
        age = None
        if args.older_than:
            seconds = units.duration(args.older_than, "--older-than", plain_seconds=False, zero=True)
            age = dt.timedelta(seconds=seconds)
        size = int(units.size(args.max_size, "--max-size")) if args.max_size else None
        cfg = collector_config.load(args.config or collector_config.default_path())
        with open_ledger(cfg.store, readonly=False) as ledger:
            report = retention.prune(ledger, age, size, args.include_alerted)
    except (ExfilGuardError, OSError) as exc:
        print(f"exfilguard prune: {exc}", file=sys.stderr)
        return 2
    if args.json:
        doc = {
            "deleted": report.deleted,
            "checkpoints": {a: cp.to_dict() for a, cp in report.checkpoints.items()},
            "held_by_alerts": report.held_by_alerts,
            "used_bytes_before": report.used_before,
            "used_bytes_after": report.used_after,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"pruned {report.deleted} events; store uses {report.used_after} bytes (was {report.used_before})")
    for agent_id, cp in report.checkpoints.items():
        print(f"  agent {agent_id}: checkpoint at sequence {cp.sequence}, chain {cp.chain.hex()}")
    if report.held_by_alerts:
        held = ", ".join(report.held_by_alerts)
        print(f"  kept events cited by open alerts for: {held} (--include-alerted to prune)")
    return 0
