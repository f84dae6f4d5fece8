"""What the admin commands print: fixed-width tables, JSON, errors, and text made safe for a terminal.

Also the `--config` / `--json` options every command group that reads the collector's store has.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the header) as left-aligned columns two spaces apart, one line each."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )


def clean(text: str, *, multiline: bool = False) -> str:
    """`text` with every control character shown as '?'.

    Names and fields come from endpoints and devices: none may rewrite the officer's terminal.
    """
    return "".join(ch if ch.isprintable() or (multiline and ch == "\n") else "?" for ch in text)


def print_json(value: Any) -> None:
    """`value` as indented JSON with sorted keys on stdout."""
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def fail(command: str, message: str, code: int) -> int:
    """Say what went wrong on stderr as `exfilguard COMMAND: message`; returns the exit code."""
    print(f"exfilguard {command}: {message}", file=sys.stderr)
    return code


def command(subparsers: Any, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """Add the command `name`; its --help shows `doc` (the module docstring) as it is written."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def store_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """`--config` and `--json`; sub-commands pass SUPPRESS so a value given before them is kept."""
    parser.add_argument(
        "--config",
        default=default,
        help="the collector's config (default: $EXFILGUARD_CONFIG or /etc/exfilguard/collector.yaml)",
    )
    parser.add_argument(
        "--json", action="store_true", default=False if default is None else default, help="print JSON"
    )
