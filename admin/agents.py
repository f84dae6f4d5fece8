"""`exfilguard agents`: the fleet registry as a table, or JSON with --json (reads the store, read-only)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from admin import terminal
from admin.configured import load_configured
from collector.fleet.health import health
from collector.store import AgentRecord, CollectorRecord, StoreError, open_store, presence
from collector.store.grants import GrantRecord
from common.ecstime import ecs_now, ecs_time_at
from common.errors import ExfilGuardError
from common.yamlfile import YamlError

_COLUMNS = (
    *("ID", "HOST", "VERSION", "HEALTH", "CONNECTED", "COLLECTOR"),
    *("LAST SEEN", "BACKLOG", "GAPS", "LOST", "CONFIG"),
)


def register(subparsers: Any) -> None:
    """Add the `agents` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "agents", help="list the fleet registry", description="Every agent the collector has seen."
    )
    parser.add_argument(
        "--config",
        default=None,
        help="the collector's config (default: $EXFILGUARD_CONFIG or /etc/exfilguard/collector.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the registry; 2 on a bad config, 1 when the store cannot be read."""
    config = load_configured("agents", args.config)
    try:
        store = open_store(config.store, readonly=True)
        try:
            records = store.agents()
            collectors = store.fleet_collectors()
            granted = store.grants(active_at=ecs_now())
        finally:
            store.close()
    except StoreError as exc:
        print(f"exfilguard agents: {exc}", file=sys.stderr)
        return 1
    silent_after = config.silent_agent_seconds
    expected = _expected_config(config.agent_config, records, granted, config.state_dir)
    if args.json:
        rows = [{**r.as_dict(), "health": health(r, silent_after)} for r in records]
        for row in rows:
            if row["id"] in expected:
                row["config_expected"] = expected[row["id"]]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(records, silent_after, expected))
        if len(collectors) > 1:  # a fleet of collectors on one store: which of them are alive
            sys.stdout.write("\n" + format_collectors(collectors))
    return 0


def format_collectors(collectors: list[CollectorRecord], now: float | None = None) -> str:
    """The fleet's collectors as their leases say: `live` when renewed within the lease, else `gone`."""
    live_after = ecs_time_at((now or time.time()) - presence.LEASE_SECONDS)
    rows = [("COLLECTOR", "LISTEN", "STATE", "STARTED", "LAST LEASE", "SIGNING KEY")] + [
        (c.name, c.listen, "live" if c.seen >= live_after else "gone", c.started, c.seen, c.signing_key[:16])
        for c in collectors
    ]
    return terminal.table(rows)


def _expected_config(
    fleet_path: str | None, records: list[AgentRecord], granted: list[GrantRecord], state_dir: str
) -> dict[str, str]:
    """agent id -> the central config version the collector gives it now: the fleet file's settings
    with its host's grants (empty with neither)."""
    if not fleet_path and not granted:
        return {}
    from collector.evidence import keys
    from collector.fleet import config as fleetconfig
    from collector.fleet.grants import ActiveGrants

    try:
        fleet = fleetconfig.load(fleet_path) if fleet_path else fleetconfig.FleetConfig("")
    except YamlError as exc:
        print(f"exfilguard agents: agent_config not read, expected versions left out: {exc}", file=sys.stderr)
        return {}
    grant_key = ""  # the key the collector pushes with the grants: from the public file, else the key's
    for name in (keys.PUBLIC_FILE, keys.KEY_FILE):
        with contextlib.suppress(ExfilGuardError, OSError):
            grant_key = grant_key or keys.PublicKey.load(keys.key_dir(state_dir) / name).b64()
    grants = ActiveGrants(grant_key)
    grants.refresh(granted)
    return {r.id: fleet.effective(r.id, r.host, grants).version for r in records}


def format_table(
    records: list[AgentRecord], silent_after: float, expected: dict[str, str] | None = None
) -> str:
    """Fixed-width table of the registry, one agent a line; CONFIG says when it is not the expected one."""
    expected = expected or {}
    rows = [_COLUMNS] + [
        (
            r.id,
            r.host,
            r.version,
            health(r, silent_after),
            "yes" if r.connected else "no",
            # the collector its stream is on; after a disconnect, the one it was last on
            r.collector or "-",
            r.last_seen or "-",
            str(r.backlog),
            str(r.gaps),
            str(r.lost),
            _config_cell(r.config_version, expected.get(r.id, r.config_version)),
        )
        for r in records
    ]
    return terminal.table(rows) + ("" if records else "(no agents have connected yet)\n")


def _config_cell(running: str, expected: str) -> str:
    cell = running or "-"
    return cell if expected == running else f"{cell} (expected {expected or 'none'})"
