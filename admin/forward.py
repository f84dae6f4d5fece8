"""`exfilguard forward`: how far each `forward:` destination of collector.yaml is behind the store.

    exfilguard forward [--config FILE] [--json]

One row per destination: its type and where it sends, the events it took (its cursors), the
events stored (each agent's acknowledged prefix) and the difference: what it still has to
send. Read-only; the running collector's metrics say the same live
(`exfilguard_forward_lag_events`). A destination that was renamed or removed keeps its old
cursors in the store; they are not shown.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from admin import terminal
from admin.configured import EXIT_STORE, load_configured
from collector.config import HttpDestination
from collector.store import StoreError, open_store
from collector.store.cursors import CursorBook


def register(subparsers: Any) -> None:
    """Add the `forward` command."""
    parser = terminal.command(subparsers, "forward", "how far each forwarding destination is behind", __doc__)
    terminal.store_options(parser, None)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print each destination's position; 2 on a bad config, 1 when the store cannot be read."""
    config = load_configured("forward", args.config)
    rows: list[dict[str, Any]] = []
    try:
        store = open_store(config.store, readonly=True)
        try:
            book = CursorBook(store.domain(), store.domain())
            heads = book.heads()
            stored = sum(heads.values())
            for spec in config.forward:
                cursors = book.load(spec.name)
                taken = sum(min(cursors.get(a, 0), h) for a, h in heads.items())
                where = spec.url if isinstance(spec, HttpDestination) else f"{spec.address}/{spec.protocol}"
                rows.append(
                    {
                        "name": spec.name,
                        "type": spec.type,
                        "where": where,
                        "format": spec.format,
                        "forwarded": taken,
                        "stored": stored,
                        "behind": stored - taken,
                    }
                )
        finally:
            store.close()
    except StoreError as exc:
        return terminal.fail("forward", str(exc), EXIT_STORE)
    if args.json:
        terminal.print_json(rows)
        return 0
    if not rows:
        print("no forward: destinations in the config", file=sys.stderr)
        return 0
    header = ("NAME", "TYPE", "WHERE", "FORMAT", "FORWARDED", "STORED", "BEHIND")
    lines = [
        [
            terminal.clean(str(r[k]))
            for k in ("name", "type", "where", "format", "forwarded", "stored", "behind")
        ]
        for r in rows
    ]
    sys.stdout.write(terminal.table([header, *lines]))
    return 0
