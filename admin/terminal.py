"""What the admin commands print: fixed-width tables, JSON, errors, and text made safe for a terminal.

Also the `--config` / `--json` options every command group that reads the collector's store has,
and the time options (`--since`, `--until`) they share.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from common import units
from common.errors import ExfilGuardError


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


class Exit(ExfilGuardError):
    """Ends a command with exit `code` once it has said why on stderr; `exfilguard` returns the
    code (so a helper deep in a command can end it without every caller checking)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exit {code}")


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


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 date/time (UTC unless it says otherwise) or a duration ago (`90m`, `24h`, `7d`), in UTC.

    `--since/--until` of `exfilguard export`, `alerts` and `devices` take it; durations are
    common.units' grammar. argparse names the option in the error.
    """
    try:
        try:
            ago = units.duration(text, plain_seconds=False, zero=True)
        except units.UnitError:
            moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)
    except (ValueError, OverflowError) as exc:  # 99999999d ago, or 0001-01-01T00:00-01:00, is no time
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or a duration like 7d (within years 1-9999): {text!r}"
        ) from exc
