"""`exfilguard alerts`: list stored alerts, show one with its triage history and evidence, and
triage them (`close`, `reopen`). Statuses and limits: collector/store/triage.py, docs/alerts.md.

Exit codes: 0 done; 1 the store cannot be read or written; 2 usage, config or input error
(nothing changed); 3 an alert id is not stored (named; nothing changed).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from collections.abc import Callable
from typing import Any

from admin import terminal
from admin.configured import EXIT_USAGE, with_store
from admin.terminal import clean, parse_time, print_json, store_options
from collector.console.queries import evidence_events
from collector.store import AlertFilter, Store, StoreError, triage
from common.ecstime import ecs_time
from common.records import from_attributes

EXIT_UNKNOWN_ALERT = 3

_COLUMNS = (
    "ID", "TIME", "SEVERITY", "RISK", "STATUS", "POLICY", "HOST", "USER", "DEVICE", "COUNT", "SUMMARY",
)  # fmt: skip
_SUMMARY_WIDTH = 100
_SEVERITIES = ("low", "medium", "high", "critical")
_MAX_FILTER_VALUES = 100


def register(subparsers: Any) -> None:
    """Add the `alerts` command and its `show`, `close` and `reopen` sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "alerts",
        help="list, show and triage stored alerts",
        description="The newest alerts the collector raised, oldest first; `show`, `close` and "
        "`reopen` one or more of them. Statuses: " + ", ".join(triage.STATUSES) + " (see docs/alerts.md).",
    )
    store_options(parser, default=None)
    parser.add_argument("--limit", type=int, default=100, help="how many of the newest alerts (default 100)")
    parser.add_argument(
        "--since",
        type=parse_time,
        default=None,
        metavar="TIME",
        help="only alerts at or after this time: ISO 8601 (UTC unless it says otherwise) or a "
        "duration ago such as 90m, 24h, 7d (as for export)",
    )
    parser.add_argument(
        "--status",
        dest="statuses",
        action="append",
        choices=triage.STATUSES,
        help="only alerts with this status (repeatable; default: all)",
    )
    parser.add_argument(
        "--severity",
        dest="severities",
        action="append",
        choices=_SEVERITIES,
        help="only this severity (repeatable)",
    )
    parser.add_argument(
        "--policy",
        dest="policies",
        action="append",
        metavar="ID",
        help="only alerts of this policy (repeatable)",
    )
    for flag, dest, what in (
        ("--host", "hosts", "host.name"),
        ("--user", "users", "user.name"),
        ("--device-serial", "devices", "device.serial"),
    ):
        parser.add_argument(
            flag, dest=dest, action="append", metavar="VALUE", help=f"only alerts of this {what} (repeatable)"
        )
    parser.set_defaults(run=run)
    sub = parser.add_subparsers(dest="alerts_command", metavar="[show|close|reopen]", title="sub-commands")

    show = sub.add_parser("show", help="one alert, its triage history and its evidence events")
    show.add_argument("id", metavar="ID", help="the alert's id")
    store_options(show, default=argparse.SUPPRESS)
    show.set_defaults(run=run_show)

    close = sub.add_parser("close", help="close alerts, with a note saying why")
    close.add_argument("ids", nargs="+", metavar="ID", help="alert ids")
    close.add_argument(
        "--status",
        dest="status",
        choices=triage.CLOSED_STATUSES,
        default="closed",
        help="resolved (a real incident, handled), false_positive, or closed (default)",
    )
    _triage_options(close)
    close.set_defaults(run=run_triage)

    reopen = sub.add_parser("reopen", help="set alerts back to open, with a note saying why")
    reopen.add_argument("ids", nargs="+", metavar="ID", help="alert ids")
    _triage_options(reopen)
    reopen.set_defaults(run=run_triage, status=triage.OPEN)


def _triage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--note", required=True, help=f"why (required; at most {triage.MAX_NOTE_CHARS} characters)"
    )
    parser.add_argument(
        "--by", default=None, metavar="NAME", help="who (default: $SUDO_USER or your login name)"
    )
    store_options(parser, default=argparse.SUPPRESS)


def invoking_user() -> str:
    """Who runs the command: the user behind sudo, else the login name, else the account name."""
    sudo = os.environ.get("SUDO_USER", "").strip()
    if sudo:
        return sudo
    try:
        return os.getlogin()
    except OSError:  # no controlling terminal (cron, systemd, CI)
        return pwd.getpwuid(os.getuid()).pw_name


# ---------------------------------------------------------------------- commands


def run(args: argparse.Namespace) -> int:
    """List alerts; 2 on a bad config or filter, 1 when the store cannot be read."""
    if not 1 <= args.limit <= 100_000:
        return _fail("--limit must be between 1 and 100000", EXIT_USAGE)
    for flag, values in (
        ("--policy", args.policies),
        ("--host", args.hosts),
        ("--user", args.users),
        ("--device-serial", args.devices),
    ):
        if len(values or ()) > _MAX_FILTER_VALUES:
            return _fail(f"at most {_MAX_FILTER_VALUES} {flag} values", EXIT_USAGE)
    # Stored alert times are ECS text (UTC, microseconds, Z): the same form compares in time order.
    since = ecs_time(args.since) if args.since else None

    def work(store: Store) -> int:
        alerts = store.alerts(limit=args.limit, since=since, where=from_attributes(AlertFilter, args))
        if args.json:
            print_json(alerts)
        else:
            sys.stdout.write(format_table(alerts))
        return 0

    return _with_store(args, work, readonly=True)


def run_show(args: argparse.Namespace) -> int:
    """Print one alert with its history and evidence; 3 if it is not stored."""

    def work(store: Store) -> int:
        alert = store.alert(args.id)
        if alert is None:
            return _fail(f"no such alert: {args.id}", EXIT_UNKNOWN_ALERT)
        history = store.alert_history(args.id)
        events, missing = evidence_events(store, alert)
        if args.json:
            print_json(
                {
                    "alert": alert,
                    "history": [h.as_dict() for h in history],
                    "evidence": events,
                    "evidence_missing": missing,
                }
            )
        else:
            sys.stdout.write(format_alert(alert, history, events, missing))
        return 0

    return _with_store(args, work, readonly=True)


def run_triage(args: argparse.Namespace) -> int:
    """Close or reopen alerts; 3 (nothing changed) if any id is not stored."""
    by = args.by if args.by is not None else invoking_user()
    try:
        triage.check_triage("exfilguard alerts", args.ids, args.status, by, args.note)
    except triage.InvalidTriage as exc:
        return _fail(f"{exc.field}: {exc.reason}", EXIT_USAGE)

    def work(store: Store) -> int:
        entries = store.triage_alerts(args.ids, args.status, by=by, note=args.note)
        if args.json:
            print_json([e.as_dict() for e in entries])
        else:
            for e in entries:
                print(f"{e.alert_id}: {e.from_status} -> {e.to_status}")
            print(f"{len(entries)} alert(s) set to {args.status} by {by}")
        return 0

    return _with_store(args, work, readonly=False)


# ---------------------------------------------------------------------- helpers


def _with_store(args: argparse.Namespace, work: Callable[[Store], int], *, readonly: bool) -> int:
    return with_store("alerts", args.config, work, readonly=readonly, refusal=_refusal)


def _refusal(exc: StoreError) -> tuple[str, int] | None:
    if isinstance(exc, triage.AlertNotFound):
        return f"no such alert: {', '.join(exc.alert_ids)} (nothing was changed)", EXIT_UNKNOWN_ALERT
    if isinstance(exc, triage.InvalidTriage):
        return f"{exc.field}: {exc.reason}", EXIT_USAGE
    return None


def _fail(message: str, code: int) -> int:
    return terminal.fail("alerts", message, code)


def format_table(alerts: list[dict[str, Any]]) -> str:
    """Fixed-width table, one alert a line, summary cut to fit."""
    rows = [_COLUMNS] + [
        (
            clean(str(a.get("id", ""))),
            str(a.get("@timestamp", ""))[:19].replace("T", " "),
            clean(str(a.get("severity", ""))),
            _risk(a.get("exfilguard.risk.score")),
            clean(str(a.get("status", triage.OPEN))),
            clean(str(a.get("policy.id", ""))),
            clean(str(a.get("host.name", ""))) or "-",
            clean(str(a.get("user.name", ""))) or "-",
            clean(str(a.get("device.serial", ""))) or "-",
            str(a.get("count", "")),
            _cut(str(a.get("summary", ""))),
        )
        for a in alerts
    ]
    return terminal.table(rows) + ("" if alerts else "(no alerts)\n")


def _risk(value: Any) -> str:
    """The user's risk score as the list shows it ("-" for alerts raised without one)."""
    return f"{value:.0f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


_SHOWN_FIRST = (
    "id", "@timestamp", "status", "severity", "exfilguard.risk.score", "policy.id", "policy.title",
    "summary", "count", "host.name", "user.name", "agent.id", "device.serial", "file.path", "file.size",
)  # fmt: skip
_EVENT_COLUMNS = ("@timestamp", "agent.id", "event.sequence", "event.action", "user.name", "event.id")


def format_alert(
    alert: dict[str, Any], history: list[triage.TriageEntry], events: list[dict[str, Any]], missing: list[str]
) -> str:
    """The alert's fields (the officer's essentials first), its triage history, its evidence."""
    out: list[str] = []
    keys = [k for k in _SHOWN_FIRST if k in alert] + sorted(
        k for k in alert if k not in _SHOWN_FIRST and k != "evidence"
    )
    width = max(len(k) for k in keys)
    for key in keys:
        value = alert[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out.append(f"{key.ljust(width)}  {clean(text)}")
    out.append("")
    out.append(f"Triage history ({len(history)}):")
    for h in history:
        note = clean(h.note, multiline=True).replace("\n", "\n      ")
        out.append(f"  {h.at}  {clean(h.by)}  {h.from_status} -> {h.to_status}\n      {note}")
    if not history:
        out.append("  (never triaged)")
    out.append("")
    cited = len(events) + len(missing)
    out.append(f"Evidence ({cited} event(s) cited, {len(events)} stored):")
    for event in events:
        cells = [clean(str(event.get(c, ""))) for c in _EVENT_COLUMNS]
        what = event.get("file.path") or event.get("device.serial") or ""
        out.append("  " + "  ".join(cells) + (f"  {clean(str(what))}" if what else ""))
    for event_id in missing:
        out.append(f"  {clean(event_id)}  (no longer stored: pruned, or never received)")
    return "\n".join(out) + "\n"


def _cut(text: str) -> str:
    text = clean(" ".join(text.split()))
    return text if len(text) <= _SUMMARY_WIDTH else text[: _SUMMARY_WIDTH - 1] + "…"
