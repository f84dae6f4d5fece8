"""`exfilguard config show|check`: central agent config as the collector will push it.

`config show --agent ID | --host H` prints an agent's effective central config (YAML with a
header saying which levels of the fleet file made it, or JSON with --json); with --agent the
host name comes from the fleet registry, so host globs match as they do at push time.
`config check [FILE]` validates a fleet file (default: collector.yaml's agent_config).

Exit codes: 0 ok, 1 store or lookup problem, 2 bad config or fleet file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from admin.configured import load_configured
from collector.fleet import config as fleetconfig
from collector.store import StoreError, open_store
from common.yamlfile import YamlError

_CONFIG_HELP = "the collector's config (default: $EXFILGUARD_CONFIG or /etc/exfilguard/collector.yaml)"


def register(subparsers: Any) -> None:
    """Add the `config` command group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config", help="central agent config (fleet file)",
        description="The agent settings and tag maps the collector pushes (collector.yaml agent_config).",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser("show", help="an agent's effective central config",
                          description="Print the central config the collector pushes to one agent.")
    who = show.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", help="agent id (its host name is read from the registry)")
    who.add_argument("--host", metavar="H", help="host name (as an agent on that host reports it)")
    show.add_argument("--config", default=None, help=_CONFIG_HELP)
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(run=run_show)
    check = sub.add_parser("check", help="validate a fleet file",
                           description="Validate a fleet file; errors name file:line:key.")
    check.add_argument("file", nargs="?", default=None, help="fleet file (default: agent_config)")
    check.add_argument("--config", default=None, help=_CONFIG_HELP)
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Validate the fleet file; 0 valid, 2 not."""
    path = args.file
    if path is None:
        config = load_configured("config check", args.config)
        if not config.agent_config:
            print("exfilguard config check: collector.yaml sets no agent_config", file=sys.stderr)
            return 2
        path = config.agent_config
    try:
        fleet = fleetconfig.load(path)
    except YamlError as exc:
        print(f"exfilguard config check: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: ok ({len(fleet.groups)} groups, {len(fleet.hosts)} hosts entries)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print the effective config of one agent."""
    config = load_configured("config show", args.config)
    if not config.agent_config:
        print("exfilguard config show: collector.yaml sets no agent_config: nothing is pushed",
              file=sys.stderr)
        return 2
    try:
        fleet = fleetconfig.load(config.agent_config)
    except YamlError as exc:
        print(f"exfilguard config show: {exc}", file=sys.stderr)
        return 2
    agent_id, host, running = args.agent or "", args.host or "", None
    if args.agent:
        try:
            store = open_store(config.store, readonly=True)
            try:
                record = next((r for r in store.agents() if r.id == args.agent), None)
            finally:
                store.close()
        except StoreError as exc:
            print(f"exfilguard config show: {exc}", file=sys.stderr)
            return 1
        if record is None:
            print(f"exfilguard config show: no agent {args.agent!r} in the registry", file=sys.stderr)
            return 1
        host, running = record.host, record.config_version
    effective = fleet.effective(agent_id, host)
    if args.json:
        doc = {
            "agent_id": agent_id or None, "host": host, "version": effective.version,
            "running": running, "sources": list(effective.sources), "settings": effective.settings,
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    who = f"agent {agent_id} on {host or '?'}" if agent_id else f"host {host}"
    lines = [
        f"# {who}: version {effective.version or 'none (agent.yaml alone)'}",
        f"# from: {', '.join(effective.sources) or 'nothing in ' + fleet.path}",
    ]
    if running is not None:
        state = "up to date" if running == effective.version else "not applied yet"
        lines.append(f"# running: {running or 'none'} ({state})")
    sys.stdout.write("\n".join(lines) + "\n")
    if effective.settings:
        sys.stdout.write(yaml.safe_dump(effective.settings, sort_keys=True))
    return 0
