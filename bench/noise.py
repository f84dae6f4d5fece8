"""Alert noise of the shipped pack on a synthetic enterprise, and whether it still catches insiders.

    python -m bench.noise [--users 1000] [--days 42] [--insiders 10] [--large]

bench/_fleet.py generates weeks of activity of a fleet in the shape of CERT-style insider
datasets (office staff, engineers, IT admins on dozens of PCs, late workers, USB habits,
holidays, leave) with injected insiders: users who never used removable media starting to,
late at night; departing users copying many times their usual volume. The events go through the
real pack (policies/, with the generated departing list as `departing_users`) by the library
entry point of `exfilguard policy test` (collector/policy/replay.py), with device approvals
empty: no manual tuning.

Figures:
  benign_medium_plus_per_1000_user_days  alerts of medium or above on users who are not
                                         insiders, per 1,000 active user-days (target < 5)
  benign_high_plus_per_1000_user_days    the same for high and critical
  unapproved_device_per_1000_user_days   usb-unknown-device alerts (low now) on the same days: what
                                         the pack raised at medium before severity came from
                                         combination (the baseline of this run)
  insider_recall                         share of insiders with a high/critical alert within
                                         24 h of their first malicious act (target 1.0)
  insider_hours_to_alert_max / _median   event time from the first act to that alert
  replay_seconds, replay_cpu_seconds     the replay with behaviour (baselines, risk): wall and CPU
  events_per_cpu_second                  events through the pack per CPU second
  behaviour_cost_ratio                   replay CPU with behaviour / without, same events
  baseline_bytes_per_user, baseline_mib  memory of the baselines held (tracemalloc of a restore):
                                         users', hosts' and peer groups', per user
With --large, also (10,000 users): month_replay_seconds and month_replay_cpu_seconds (30 days
through the pack: target < 60), month_events, and baseline_mib_90d / baseline_seconds_90d (the
baselines alone over 90 days: memory held, CPU seconds).
The last line is one JSON object with these keys.
"""

from __future__ import annotations

import gc
import json
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _cli, _fleet
from collector.behaviour.enrich import Behaviour
from collector.policy import loader
from collector.policy.engine import event_time
from collector.policy.model import PolicySet
from collector.policy.replay import engine_for, replay

PACK = Path(__file__).resolve().parents[1] / "policies"
SEVERE = ("high", "critical")
MEDIUM_PLUS = ("medium", "high", "critical")


def pack_for(fleet: _fleet.Fleet, where: Path) -> PolicySet:
    """The shipped pack with the fleet's departing list in place of the site lists' one."""
    for path in PACK.glob("*.yaml"):
        shutil.copy(path, where / path.name)
    lists = (where / "lists.yaml").read_text(encoding="utf-8")
    lists = lists.replace("departing_users: []", f"departing_users: {json.dumps(fleet.departing)}")
    (where / "lists.yaml").write_text(lists, encoding="utf-8")
    return loader.load([where])


Run = tuple[list[dict[str, Any]], float, int, set[tuple[str, int]]]
CPU: dict[str, float] = {}  # CPU seconds of the last run() per mode: the shared machine's wall time lies


def run(fleet: _fleet.Fleet, policy_set: PolicySet, *, behaviour: bool) -> Run:
    """Replay the fleet's days; alerts, seconds in the engine, events, active (user, day) pairs."""
    engine = engine_for(policy_set, timezone="UTC", behaviour=behaviour, groups=fleet.groups)
    alerts: list[dict[str, Any]] = []
    active: set[tuple[str, int]] = set()
    spent, cpu, n = 0.0, 0.0, 0
    for day, batch in enumerate(_fleet.events(fleet)):
        active.update((str(e["user.name"]), day) for e in batch)
        n += len(batch)
        started, started_cpu = time.perf_counter(), time.process_time()
        alerts.extend(a.to_json() for a in replay(engine, batch, final=day == fleet.days - 1))
        spent += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
    CPU["with" if behaviour else "without"] = cpu
    return alerts, spent, n, active


def score(fleet: _fleet.Fleet, alerts: list[dict[str, Any]], active: set[tuple[str, int]]) -> dict[str, Any]:
    """Noise on the benign population, recall and time-to-alert on the insiders."""
    insiders = {p.name: p for p in fleet.insiders()}
    benign_days = sum(1 for user, _ in active if user not in insiders)
    benign = [a for a in alerts if a.get("user.name") not in insiders]
    medium = [a for a in benign if a["severity"] in MEDIUM_PLUS]
    high = [a for a in benign if a["severity"] in SEVERE]
    unknown = [a for a in benign if a["policy.id"] == "usb-unknown-device"]
    delays: dict[str, float] = {}
    for alert in alerts:
        person = insiders.get(str(alert.get("user.name")))
        if person is None or alert["severity"] not in SEVERE or not person.first_act:
            continue
        at = event_time({"@timestamp": alert.get("event.end")}) or 0.0
        delay = at - person.first_act
        if -60 <= delay <= 86_400 and delay < delays.get(person.name, float("inf")):
            delays[person.name] = max(delay, 0.0)
    acted = [p for p in insiders.values() if p.first_act]
    hours = sorted(d / 3600 for d in delays.values())
    return {
        "benign_user_days": benign_days,
        "benign_medium_plus": len(medium),
        "benign_medium_plus_per_1000_user_days": round(1000 * len(medium) / max(benign_days, 1), 3),
        "benign_high_plus_per_1000_user_days": round(1000 * len(high) / max(benign_days, 1), 3),
        "unapproved_device_per_1000_user_days": round(1000 * len(unknown) / max(benign_days, 1), 1),
        "benign_by_policy": dict(Counter(f"{a['policy.id']}/{a['severity']}" for a in benign).most_common()),
        "insiders": len(acted),
        "insider_recall": round(len(delays) / max(len(acted), 1), 3),
        "insider_hours_to_alert_max": round(hours[-1], 2) if hours else None,
        "insider_hours_to_alert_median": round(statistics.median(hours), 2) if hours else None,
        "missed": sorted(f"{p.name}:{p.insider}" for p in acted if p.name not in delays),
    }


def baseline_memory(fleet: _fleet.Fleet) -> tuple[float, int, int]:
    """Build baselines alone over the fleet; (CPU seconds, bytes held by a restored copy, users)."""
    behaviour = Behaviour("UTC", fleet.groups)
    spent = 0.0
    for batch in _fleet.events(fleet):
        started = time.process_time()
        for event in batch:
            behaviour.enrich(event, event_time(event) or 0.0)
        spent += time.process_time() - started
    snapshot = behaviour.snapshot()
    users = len(behaviour.baselines.users)  # the snapshot also holds the hosts' rows
    del behaviour
    gc.collect()
    tracemalloc.start()
    copy = Behaviour("UTC", fleet.groups)
    copy.restore(snapshot)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del copy
    return spent, held, users


def main() -> int:
    """Generate, replay with and without behaviour, score, and print the figures."""
    parser = _cli.parser("noise", __doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=42)
    parser.add_argument("--insiders", type=int, default=10)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument(
        "--large",
        action="store_true",
        help="also 10,000 users: a month through the pack, 90 days of baselines",
    )
    args = parser.parse_args()
    fleet = _fleet.build(args.users, args.days, args.seed, args.insiders)
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp:
        policy_set = pack_for(fleet, Path(tmp))
        alerts, spent, n, active = run(fleet, policy_set, behaviour=True)
        run(fleet, policy_set, behaviour=False)  # the baseline: CPU["without"]
        figures = score(fleet, alerts, active)
        user_days = figures["benign_user_days"]
        print(f"{args.users} users x {args.days} days: {n} events, {user_days} benign user-days")
        print(f"benign alerts by policy/severity: {figures.pop('benign_by_policy')}")
        print(f"insiders missed: {figures.pop('missed') or 'none'}")
        _, held, users = baseline_memory(fleet)
        figures.update(
            users=args.users,
            days=args.days,
            events=n,
            replay_seconds=round(spent, 2),
            replay_cpu_seconds=round(CPU["with"], 2),
            events_per_cpu_second=round(n / CPU["with"]),
            behaviour_cost_ratio=round(CPU["with"] / CPU["without"], 2),
            baseline_bytes_per_user=round(held / max(users, 1)),
            baseline_mib=round(held / (1 << 20), 2),
        )
        if args.large:
            big = _fleet.build(10_000, 30, args.seed, args.insiders)
            big_set = pack_for(big, Path(tmp))
            _, month, month_events, _ = run(big, big_set, behaviour=True)
            month_cpu = CPU["with"]
            seconds90, held90, _ = baseline_memory(_fleet.build(10_000, 90, args.seed, args.insiders))
            figures.update(
                month_replay_seconds=round(month, 1),
                month_replay_cpu_seconds=round(month_cpu, 1),
                month_events=month_events,
                baseline_mib_90d=round(held90 / (1 << 20), 1),
                baseline_seconds_90d=round(seconds90, 1),
            )
    for key, value in figures.items():
        print(f"  {key}: {value}")
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
