"""`exfilguard export`: filtered CSV / JSON Lines export of stored events with a signed manifest.

Exit codes: 0 written and every exported record matches its stored chain value;
1 written, but the store's chain is broken at some record (named on stderr and in the
manifest); 2 usage, configuration, store or I/O error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from admin import terminal
from admin.terminal import parse_time
from collector import config as collector_config
from collector.evidence import export, keys, manifest
from common.errors import ExfilGuardError
from common.records import from_attributes

EXIT_OK, EXIT_BROKEN_CHAIN, EXIT_ERROR = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export`."""
    p = terminal.command(sub, "export", "export events as CSV or JSON Lines with a signed manifest", __doc__)
    p.add_argument(
        "--config", default=None, help="collector.yaml (default $EXFILGUARD_CONFIG or /etc/exfilguard)"
    )
    p.add_argument("--format", choices=export.FORMATS, required=True)
    p.add_argument(
        "--out", required=True, help="export file; '-' writes to stdout (then --manifest is needed)"
    )
    p.add_argument("--manifest", help="manifest path (default: OUT.manifest.json)")
    p.add_argument("--since", type=parse_time, help="from this time (ISO 8601 or e.g. 7d ago), inclusive")
    p.add_argument("--until", type=parse_time, help="up to this time, exclusive")
    p.add_argument("--host")
    p.add_argument("--user")
    p.add_argument("--agent")
    p.add_argument("--action")
    p.add_argument("--device-serial")
    p.add_argument(
        "--policy", action="append", default=[], help="events that alerts of this policy cite (repeatable)"
    )
    p.add_argument("--alert", action="append", default=[], help="events this alert cites (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the export; see the module docstring for exit codes."""
    from collector.store import open_store

    if args.out == "-" and not args.manifest:
        print(
            "exfilguard export: --out - needs --manifest FILE (the manifest cannot go to stdout too)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    where = from_attributes(export.ExportFilter, args, policies=tuple(args.policy), alerts=tuple(args.alert))
    out_path = None if args.out == "-" else args.out
    manifest_path = args.manifest or str(manifest.path_for(args.out))
    try:
        cfg = collector_config.load(args.config or collector_config.default_path())
        key = keys.load_or_create(cfg.state_dir)
        store = open_store(cfg.store, readonly=True)
        try:
            with store.ledger() as ledger:
                if where.alerts:
                    unknown = set(where.alerts) - ledger.alerts_exist(where.alerts)
                    if unknown:
                        print(
                            f"exfilguard export: no such alert: {', '.join(sorted(unknown))}", file=sys.stderr
                        )
                        return EXIT_ERROR
                progress = not args.no_progress and sys.stderr.isatty()
                done = export.export_store(
                    store, ledger, where, args.format, out_path, manifest_path, key, progress
                )
        finally:
            store.close()
    except (ExfilGuardError, OSError) as exc:
        print(f"exfilguard export: {exc}", file=sys.stderr)
        return EXIT_ERROR
    result = done.result
    print(
        f"exported {result.rows} events from {len(result.agents)} agents to {args.out}"
        f" (sha256 {result.sha256}); manifest {Path(manifest_path)}",
        file=sys.stderr,
    )
    if done.unchained:
        print(
            f"note: {done.unchained} events above a sequence hole are not chained yet and were left out",
            file=sys.stderr,
        )
    if result.store_breaks:
        for brk in result.first_breaks[:10]:
            print(
                f"CHAIN BROKEN in the store: agent {brk['agent.id']} sequence {brk['sequence']}"
                " does not match its chain value (edited after ingest?)",
                file=sys.stderr,
            )
        print(
            f"{result.store_breaks} broken record(s) in total; they are exported as stored", file=sys.stderr
        )
        return EXIT_BROKEN_CHAIN
    return EXIT_OK
