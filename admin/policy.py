"""`exfilguard policy lint` and `exfilguard policy test`: check policy files, replay recorded events."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

MAX_EVENT_LINE = 1 << 20  # one recorded event per line; longer lines are refused, not parsed


def register(subparsers: Any) -> None:
    """Add `policy lint` and `policy test`."""
    policy = subparsers.add_parser("policy", help="check policy files and replay events through them")
    sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    lint = sub.add_parser("lint", help="report every problem in policy files (exit 1 on any error)")
    lint.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    lint.add_argument("--json", action="store_true", help="print problems as a JSON list")
    lint.add_argument("--ignore", action="append", default=[], metavar="CODE", help="skip a warning code")
    lint.add_argument("--strict", action="store_true", help="warnings fail too (use in CI)")
    lint.set_defaults(run=run_lint)

    test = sub.add_parser("test", help="replay recorded events (JSON Lines) and print the alerts")
    test.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    test.add_argument("--events", required=True, metavar="FILE.jsonl", help="events, one JSON object a line")
    test.add_argument("--json", action="store_true", help="print alerts as JSON Lines")
    test.add_argument("--timezone", default="UTC", help="zone for time_of_day/weekday (default UTC)")
    test.add_argument(
        "--suppression",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="suppression window (default 600; 0 sends every repeat)",
    )
    test.add_argument(
        "--behaviour",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add baselines and risk built from the replayed events, as the collector does (default on)",
    )
    test.add_argument(
        "--peer-groups",
        metavar="COLLECTOR.yaml",
        help="take peer_groups (whom users' removable writes are compared with) from this collector config",
    )
    test.set_defaults(run=run_test)


def run_lint(args: argparse.Namespace) -> int:
    """Print every problem; exit 1 if any error (or, with --strict, any warning)."""
    from collector.policy import loader

    policy_set, problems = loader.lint_paths(args.paths, args.ignore)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if args.json:
        print(json.dumps([p.as_dict() for p in problems], indent=2))
    else:
        for problem in problems:
            print(problem)
        n = len(policy_set.policies)
        print(
            f"{n} policies, {len(policy_set.lists)} lists, {len(policy_set.macros)} macros: "
            f"{errors} error(s), {warnings} warning(s)",
            file=sys.stderr,
        )
    return 1 if errors or (args.strict and warnings) else 0


def run_test(args: argparse.Namespace) -> int:
    """Replay events through the policies (strict load) and print the alerts they raise."""
    from collector.policy import loader, replay
    from collector.policy.errors import PolicySetError

    try:
        policy_set = loader.load(args.paths)
    except PolicySetError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    groups: dict[str, str] = {}
    if args.peer_groups:
        from collector import config as collector_config
        from collector.behaviour.keeper import peer_groups
        from common.yamlfile import YamlError

        try:
            groups = peer_groups(collector_config.load(args.peer_groups).peer_groups)
        except YamlError as exc:
            print(f"bad config: {exc}", file=sys.stderr)
            return 2
    runner = replay.engine_for(
        policy_set,
        timezone=args.timezone,
        suppression=args.suppression,
        behaviour=args.behaviour,
        groups=groups,
    )
    try:
        events = list(read_events(Path(args.events)))
    except ValueError as exc:
        print(f"{args.events}: {exc}", file=sys.stderr)
        return 1
    alerts = replay.replay(runner, events)
    for raised in alerts:
        alert = raised.alert
        if args.json:
            print(json.dumps(alert, sort_keys=True))
        else:
            print(
                f"{raised.severity:<8} {raised.policy_id:<32} count={alert['count']:<5} "
                f"risk={alert.get('exfilguard.risk.score', 0):<5} {alert['summary']}"
            )
    if not args.json:
        print(
            f"{len(events)} events, {len(alerts)} alert(s), policy set {runner.set_hash[:12]}",
            file=sys.stderr,
        )
    return 0


def read_events(path: Path) -> Any:
    """Yield the JSON objects of a JSON Lines file; ValueError names the bad line (and field)."""
    from collector.policy import fields

    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read: {exc}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if len(line) > MAX_EVENT_LINE:
                raise ValueError(f"line {number}: longer than {MAX_EVENT_LINE} bytes")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                event = json.loads(line)
            except (ValueError, RecursionError) as exc:  # also a 5000-digit number or deep nesting
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
                raise ValueError(f"line {number}: not JSON: {reason}") from exc
            if not isinstance(event, dict):
                raise ValueError(f"line {number}: expected a JSON object")
            for name, value in event.items():
                problem = fields.type_problem(name, value)
                if not problem and name == "@timestamp":
                    problem = _time_problem(value)
                if problem:
                    raise ValueError(f"line {number}: {name}: {problem}")
            yield event


def _time_problem(value: object) -> str | None:
    """Why an event time cannot be one ingest would store (1970..9999, UTC), or None."""
    from collector import wirecheck

    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
    except (ValueError, OverflowError):
        return "not an ISO 8601 time"
    if not wirecheck.MIN_SECONDS <= seconds <= wirecheck.MAX_SECONDS:
        return "outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z (what ingest accepts)"
    return None
