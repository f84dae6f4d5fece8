"""`exfilguard alerts`: stored alerts as a table, or JSON with --json (reads the store, read-only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from collector import config as collector_config
from collector.store import StoreError, open_store
from protos.yamlfile import YamlError

_COLUMNS = ("TIME", "SEVERITY", "POLICY", "HOST", "USER", "DEVICE", "COUNT", "SUMMARY")
_SUMMARY_WIDTH = 100


def register(subparsers: Any) -> None:
    """Add the `alerts` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "alerts",
        help="list stored alerts",
        description="The newest alerts the collector raised, oldest first.",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="the collector's config (default: $EXFILGUARD_CONFIG or /etc/exfilguard/collector.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    parser.add_argument("--limit", type=int, default=100, help="how many of the newest alerts (default 100)")
    parser.add_argument("--since", default=None, metavar="TIME", help="only alerts at or after this ECS time")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print alerts; 2 on a bad config, 1 when the store cannot be read."""
    path = args.config or collector_config.default_path()
    try:
        config = collector_config.load(path)
    except YamlError as exc:
        print(f"exfilguard alerts: bad config: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.limit <= 100_000:
        print("exfilguard alerts: --limit must be between 1 and 100000", file=sys.stderr)
        return 2
    try:
        store = open_store(config.store, readonly=True)
        try:
            alerts = store.alerts(limit=args.limit, since=args.since)
        finally:
            store.close()
    except StoreError as exc:
        print(f"exfilguard alerts: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(alerts, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(alerts))
    return 0


def format_table(alerts: list[dict[str, Any]]) -> str:
    """Fixed-width table, one alert a line, summary cut to fit."""
    rows = [_COLUMNS] + [
        (
            str(a.get("@timestamp", ""))[:19].replace("T", " "),
            str(a.get("severity", "")),
            str(a.get("policy.id", "")),
            str(a.get("host.name", "")) or "-",
            str(a.get("user.name", "")) or "-",
            str(a.get("device.serial", "")) or "-",
            str(a.get("count", "")),
            _cut(str(a.get("summary", ""))),
        )
        for a in alerts
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not alerts:
        lines.append("(no alerts)")
    return "\n".join(lines) + "\n"


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SUMMARY_WIDTH else text[: _SUMMARY_WIDTH - 1] + "…"
