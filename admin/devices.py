"""`exfilguard devices`: every removable device the fleet has seen, and who may use which.

    exfilguard devices [--json] [--since TIME]                 list what was seen, approved or not
    exfilguard devices approve SERIAL [--user U|--group G] --note TEXT
    exfilguard devices revoke SERIAL [--user U|--group G] --note TEXT
    exfilguard devices learn --for 7d                          propose approvals from what was seen
    exfilguard devices proposals [--json]                      review them
    exfilguard devices accept|reject [SERIAL...|--all] --note TEXT
    exfilguard devices history [SERIAL] [--json]               every change: who, when, why

Changes go to the collector's store (collector/store/devices.py); a running collector picks
them up within seconds. Exit codes: 0 done, 1 store error, 2 usage or input error, 3 nothing to
revoke or accept.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from admin import terminal
from admin.alerts import invoking_user
from admin.configured import EXIT_USAGE, with_store
from admin.terminal import clean, parse_time, print_json, store_options, table
from collector.store import Store, StoreError
from collector.store.devices import DeviceBook, InvalidDeviceChange, NoSuchApproval, learn
from common.ecstime import ecs_time

EXIT_NOTHING = 3
_COLUMNS = (
    "SERIAL",
    "VENDOR:PRODUCT",
    "MODEL",
    "FIRST SEEN",
    "LAST SEEN",
    "USERS",
    "HOSTS",
    "WRITTEN",
    "ALERTS",
    "APPROVED",
)


def register(subparsers: Any) -> None:
    """Add `devices` and its sub-commands."""
    what = "removable devices seen, approvals, learning, history"
    parser = terminal.command(subparsers, "devices", what, __doc__)
    store_options(parser, default=None)
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME", help="only devices seen since (ISO time or 7d)"
    )
    parser.set_defaults(run=run_list)
    sub = parser.add_subparsers(
        dest="devices_command", metavar="[approve|revoke|learn|proposals|accept|reject|history]"
    )

    for name, what in (("approve", "approve a device"), ("revoke", "withdraw a device's approvals")):
        change = sub.add_parser(name, help=what)
        change.add_argument("serial", metavar="SERIAL")
        who = change.add_mutually_exclusive_group()
        who.add_argument("--user", help="for this user only")
        who.add_argument("--group", help="for this peer group (collector.yaml peer_groups)")
        _change_options(change)
        change.set_defaults(run=run_change, action=name)

    learning = sub.add_parser("learn", help="propose approvals from the devices seen recently")
    learning.add_argument(
        "--for",
        dest="period",
        type=parse_time,
        default="7d",
        metavar="DURATION",
        help="look back this far (7d)",
    )
    store_options(learning, default=argparse.SUPPRESS)
    learning.set_defaults(run=run_learn)

    proposals = sub.add_parser("proposals", help="the proposals waiting for review")
    store_options(proposals, default=argparse.SUPPRESS)
    proposals.set_defaults(run=run_proposals)

    for name, accept in (("accept", True), ("reject", False)):
        decide = sub.add_parser(name, help=f"{name} proposals (they take effect only when accepted)")
        decide.add_argument("serials", nargs="*", metavar="SERIAL")
        decide.add_argument("--all", action="store_true", help="every pending proposal")
        _change_options(decide)
        decide.set_defaults(run=run_decide, accept=accept)

    history = sub.add_parser("history", help="every approval change: who, when, why (export with --json)")
    history.add_argument("serial", nargs="?", metavar="SERIAL")
    store_options(history, default=argparse.SUPPRESS)
    history.set_defaults(run=run_history)


def _change_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--note", required=True, help="why (required)")
    parser.add_argument(
        "--by", default=None, metavar="NAME", help="who (default: $SUDO_USER or your login name)"
    )
    store_options(parser, default=argparse.SUPPRESS)


# ---------------------------------------------------------------------- commands


def run_list(args: argparse.Namespace) -> int:
    """The devices seen, most recently seen first, with whom each is approved for."""

    def work(book: DeviceBook) -> int:
        since = _ecs(args.since) if args.since else None
        seen = book.sightings(since)
        approved: dict[str, list[str]] = {}
        for a in book.approvals():
            approved.setdefault(a.serial, []).append(
                "everyone" if a.scope == "all" else f"{a.scope}:{a.subject}"
            )
        if args.json:
            print_json([{**s.as_dict(), "approved_for": approved.get(s.serial, [])} for s in seen])
            return 0
        rows = [_COLUMNS] + [
            (
                clean(s.serial),
                f"{clean(s.vendor_id) or '?'}:{clean(s.product_id) or '?'}",
                clean(f"{s.vendor} {s.model}".strip()) or "-",
                s.first_seen[:16].replace("T", " "),
                s.last_seen[:16].replace("T", " "),
                _names(s.users),
                _names(s.hosts),
                f"{s.files_written} files, {_size(s.bytes_written)}",
                str(s.alerts),
                clean(", ".join(approved.get(s.serial, []))) or "no",
            )
            for s in seen
        ]
        print(table(rows) + ("(no devices seen)\n" if not seen else ""), end="")
        return 0

    return _with_book(args, work, readonly=True)


def run_change(args: argparse.Namespace) -> int:
    """Approve or revoke; the change is recorded with who and why."""
    scope, subject = (
        ("user", args.user) if args.user else ("group", args.group) if args.group else ("all", "")
    )
    by = args.by or invoking_user()

    def work(book: DeviceBook) -> int:
        if args.action == "approve":
            changes = [book.approve(args.serial, scope=scope, subject=subject, by=by, note=args.note)]
        else:
            whole = args.user is None and args.group is None
            changes = book.revoke(
                args.serial, scope=None if whole else scope, subject=subject, by=by, note=args.note
            )
        _report(args, changes)
        return 0

    return _with_book(args, work, readonly=False)


def run_learn(args: argparse.Namespace) -> int:
    """Write proposals for each device and user seen in the period; nothing takes effect yet."""

    def work(book: DeviceBook) -> int:
        since = _ecs(args.period)
        written = book.propose(learn(book.sightings(since), since))
        pending = book.proposals()
        if args.json:
            print_json([p.as_dict() for p in pending])
        else:
            print(
                f"{written} proposal(s) from devices seen since {since[:16]}; {len(pending)} pending review"
            )
            print("review: exfilguard devices proposals; then devices accept SERIAL... --note TEXT")
        return 0

    return _with_book(args, work, readonly=False)


def run_proposals(args: argparse.Namespace) -> int:
    """The proposals waiting for review."""

    def work(book: DeviceBook) -> int:
        pending = book.proposals()
        if args.json:
            print_json([p.as_dict() for p in pending])
        else:
            rows = [("SERIAL", "FOR", "PROPOSED", "WHY")] + [
                (
                    clean(p.serial),
                    clean(f"{p.scope}:{p.subject}"),
                    p.at[:16].replace("T", " "),
                    clean(p.reason),
                )
                for p in pending
            ]
            print(table(rows) + ("(no proposals)\n" if not pending else ""), end="")
        return 0

    return _with_book(args, work, readonly=True)


def run_decide(args: argparse.Namespace) -> int:
    """Accept or reject proposals (named serials, or --all)."""
    if bool(args.serials) == bool(args.all):
        return _fail("name the serials or give --all (not both)", EXIT_USAGE)
    by = args.by or invoking_user()

    def work(book: DeviceBook) -> int:
        changes = book.decide(None if args.all else args.serials, accept=args.accept, by=by, note=args.note)
        _report(args, changes)
        return 0

    return _with_book(args, work, readonly=False)


def run_history(args: argparse.Namespace) -> int:
    """Every recorded change, oldest first (JSON: one object per change, for an auditor)."""

    def work(book: DeviceBook) -> int:
        changes = book.history(args.serial)
        if args.json:
            print_json([c.as_dict() for c in changes])
            return 0
        rows = [("AT", "BY", "ACTION", "SERIAL", "FOR", "NOTE")] + [
            (
                c.at[:19].replace("T", " "),
                clean(c.by),
                c.action,
                clean(c.serial),
                "everyone" if c.scope == "all" else clean(f"{c.scope}:{c.subject}"),
                clean(c.note),
            )
            for c in changes
        ]
        print(table(rows) + ("(no changes recorded)\n" if not changes else ""), end="")
        return 0

    return _with_book(args, work, readonly=True)


# ---------------------------------------------------------------------- helpers


def _with_book(args: argparse.Namespace, work: Callable[[DeviceBook], int], *, readonly: bool) -> int:
    def on_book(store: Store) -> int:
        return work(DeviceBook(store.domain()))

    return with_store("devices", args.config, on_book, readonly=readonly, refusal=_refusal)


def _refusal(exc: StoreError) -> tuple[str, int] | None:
    if isinstance(exc, InvalidDeviceChange):
        return f"{exc.field}: {exc.reason}", EXIT_USAGE
    if isinstance(exc, NoSuchApproval):
        return f"{exc.message} (nothing was changed)", EXIT_NOTHING
    return None


def _report(args: argparse.Namespace, changes: list[Any]) -> None:
    if args.json:
        print_json([c.as_dict() for c in changes])
        return
    for c in changes:
        who = "everyone" if c.scope == "all" else f"{c.scope} {c.subject}"
        print(clean(f"{c.action} {c.serial} for {who} by {c.by}: {c.note}"))


def _ecs(moment: dt.datetime) -> str:
    return ecs_time(moment)


def _names(names: dict[str, str], shown: int = 3) -> str:
    ordered = sorted(names, key=lambda n: names[n], reverse=True)
    text = ",".join(clean(n) for n in ordered[:shown])
    return (text + (f" +{len(ordered) - shown}" if len(ordered) > shown else "")) or "-"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _fail(message: str, code: int) -> int:
    return terminal.fail("devices", message, code)
