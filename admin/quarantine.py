"""`exfilguard quarantine`: on a workstation, what the agent moved off removable media, and giving it back.

    exfilguard quarantine [--agent-config FILE] [--json]          list what is quarantined
    exfilguard quarantine restore ID [--to PATH] [--agent-config FILE]

Tagged data found on a stick after it landed (prevent.removable_writes: block) is moved into
the agent's state directory (STATE_DIR/quarantine, root only); `file.quarantine` events name
each entry's id. Restoring copies the file back to where it lay (the stick mounted at the same
place) or to --to, and deletes the entry. Run as root on the workstation. Exit codes: 0 done,
1 restore failed, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import asdict
from typing import Any

from admin import terminal
from admin.terminal import clean, print_json, table
from agent.prevent import quarantine
from common import agentconfig
from common.errors import ExfilGuardError
from common.yamlfile import YamlError

_COLUMNS = ("ID", "QUARANTINED", "PATH", "SIZE", "DEVICE", "USER", "SOURCE")


def register(subparsers: Any) -> None:
    """Add `quarantine` and `quarantine restore`."""
    parser = terminal.command(subparsers, "quarantine", "files the agent moved off removable media", __doc__)
    parser.add_argument("--agent-config", default=agentconfig.DEFAULT_PATH,
                        help=f"the agent's config, for its state_dir (default {agentconfig.DEFAULT_PATH})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_list)
    sub = parser.add_subparsers(dest="quarantine_command", metavar="[restore]")
    give = sub.add_parser("restore", help="give a quarantined file back")
    give.add_argument("id", help="the entry id (the file.quarantine event's id)")
    give.add_argument("--to", help="a file or directory to restore to (default: where it lay)")
    give.add_argument("--agent-config", default=argparse.SUPPRESS, help="as above")
    give.set_defaults(run=run_restore)


def _state_dir(args: argparse.Namespace) -> str:
    return agentconfig.load(args.agent_config).state_dir


def run_list(args: argparse.Namespace) -> int:
    """List the entries."""
    try:
        found = quarantine.entries(_state_dir(args))
    except ExfilGuardError as exc:
        return terminal.fail("quarantine", str(exc), 2)
    if args.json:
        print_json([asdict(e) for e in found])
        return 0
    rows = [_COLUMNS] + [
        (e.id, dt.datetime.fromtimestamp(e.quarantined_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
         clean(e.path), str(e.size), clean(e.device_serial), clean(e.user), clean(e.source))
        for e in found
    ]
    print(table(rows))
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Restore one entry."""
    try:
        where = quarantine.restore(_state_dir(args), args.id, args.to)
    except YamlError as exc:
        return terminal.fail("quarantine restore", str(exc), 2)
    except ExfilGuardError as exc:
        return terminal.fail("quarantine restore", str(exc), 1)
    print(f"restored {args.id} to {clean(str(where))}")
    return 0
