"""The console's alert queue and a user's timeline, page time against the same query bare in the store.

    python -m bench.console [--events N] [--alerts N] [--full] [--requests R]

A SQLite store is filled with N events (default 200,000; --full: 1,000,000) of 200 users on 100
hosts over 30 days, a fifth of them writes to removable media, and with N alerts (default 2,000;
--full: 10,000) citing them; the console's indexes are built; then the console is served as the
collector serves it (aiohttp on an event loop, its own store connections, session look-up, audit
record of every view) and a logged-in client fetches each page R times (default 40):

    queue           /alerts (the open alerts, newest first, page 1)
    queue_filtered  /alerts?user=U&severity=high&severity=critical&sort=severity
    timeline        /timeline/user/U (30 days: events page, per-day removable plot, alerts)

Baseline, measured in the same run against the same store file: the page's SQL alone through a
bare sqlite3 connection (rows fetched, nothing decoded or rendered). Figures are p95 milliseconds
and the ratio page p95 / bare p95. The target is a p95 page time under 300 ms at full size.

Final line (JSON): events, alerts, fill_s, index_s, queue_p95_ms, queue_bare_p95_ms, queue_ratio,
queue_filtered_p95_ms, queue_filtered_bare_p95_ms, queue_filtered_ratio, timeline_p95_ms,
timeline_bare_p95_ms, timeline_ratio, under_300ms (all three page p95s).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _cli
from collector.console import queries
from collector.console.accounts import AccountBook
from collector.store.rows import event_row
from collector.store.sqlite import INSERT_EVENT, SqliteStore
from common.ecstime import ecs_time
from protos import exfilguard_pb2 as pb
from tests.console.running import Browserless, RunningConsole

USERS, HOSTS, DAYS = 200, 100, 30
_BATCH = 5000
_SEVERITIES = ("low", "medium", "high", "critical")
_POLICIES = ("usb-copy-database", "usb-bulk-copy", "mass-read", "unknown-usb", "after-hours-usb")


def _event(rng: random.Random, agent: int, seq: int, moment: dt.datetime) -> pb.Event:
    user = f"user{(agent * 2 + seq % 2) % USERS:03d}"
    removable = rng.random() < 0.2
    event = pb.Event(
        file=pb.File(path=f"/srv/db/part-{seq % 5000:05d}.csv", size=rng.randrange(1 << 10, 1 << 24)),
        user=pb.User(id="1000", name=user),
        host=pb.Host(name=f"ws-{agent:03d}"),
        process=pb.Process(pid=4000 + seq % 100, executable="/usr/bin/cp", command_line="cp a b"),
    )
    event.event.id = str(uuid.UUID(int=rng.getrandbits(128)))
    event.event.action = "file.write" if removable else rng.choice(("file.read", "file.open"))
    event.event.sequence = seq
    event.agent.id = f"agent-{agent:03d}"
    event.timestamp.FromDatetime(moment)
    if removable:
        event.device.serial = f"STICK-{agent:03d}"
        event.file.path = f"/media/{user}/STICK/part-{seq:06d}.csv"
    return event


def fill(path: Path, events: int, alerts: int, now: dt.datetime) -> list[str]:
    """The store with `events` events and `alerts` alerts; some evidence ids per alert are returned."""
    SqliteStore(path).close()  # the store's own schema
    rng = random.Random(15)
    db = sqlite3.connect(path, isolation_level=None)
    per_agent = events // HOSTS
    start = now - dt.timedelta(days=DAYS)
    step = dt.timedelta(days=DAYS) / max(per_agent, 1)
    evidence: list[tuple[str, str, str, str]] = []  # (event id, agent, user, host)
    for agent in range(HOSTS):
        rows = []
        for seq in range(1, per_agent + 1):
            event = _event(rng, agent, seq, start + step * seq)
            rows.append(event_row(event.agent.id, event))
            if event.event.action == "file.write" and rng.random() < 0.05:
                evidence.append((event.event.id, event.agent.id, event.user.name, event.host.name))
            if len(rows) >= _BATCH:
                db.execute("BEGIN")
                db.executemany(INSERT_EVENT, rows)
                db.execute("COMMIT")
                rows = []
        if rows:
            db.execute("BEGIN")
            db.executemany(INSERT_EVENT, rows)
            db.execute("COMMIT")
    db.close()
    store = SqliteStore(path)
    try:
        for n in range(alerts):
            event_id, agent_id, user, host = rng.choice(evidence)
            store.add_alert(
                {
                    "id": f"al-{n:06d}",
                    "@timestamp": ecs_time(start + dt.timedelta(seconds=rng.randrange(DAYS * 86400))),
                    "policy.id": rng.choice(_POLICIES),
                    "severity": rng.choice(_SEVERITIES),
                    "summary": f"{user} wrote tagged files to a stick on {host}",
                    "user.name": user,
                    "host.name": host,
                    "agent.id": agent_id,
                    "device.serial": f"STICK-{agent_id[-3:]}",
                    "evidence": [event_id],
                    "count": 1,
                }
            )
        closed = [f"al-{n:06d}" for n in range(0, alerts, 3)]
        for i in range(0, len(closed), 1000):
            store.triage_alerts(closed[i : i + 1000], "closed", by="bench", note="bench")
        AccountBook(store.domain()).add("bench", "officer", "bench password 1234", by="bench")
    finally:
        store.close()
    return [e[0] for e in evidence]


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18] * 1000


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def _bare(path: Path, user: str, now: dt.datetime) -> dict[str, Callable[[], Any]]:
    """The pages' SQL, alone, on a bare read-only connection."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    since, until = ecs_time(now - dt.timedelta(days=30)), ecs_time(now + dt.timedelta(minutes=1))
    user_field = """json_extract(body, '$."user.name"')"""
    order = "CASE severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 ELSE 1 END"

    def queue() -> None:
        db.execute("SELECT COUNT(*) FROM alerts WHERE status IN ('open')").fetchall()
        db.execute(
            "SELECT body, status FROM alerts WHERE status IN ('open') ORDER BY ts DESC, id DESC LIMIT 50"
        ).fetchall()

    def queue_filtered() -> None:
        where = f"WHERE severity IN ('high', 'critical') AND {user_field} = ?"
        db.execute(f"SELECT COUNT(*) FROM alerts {where}", (user,)).fetchall()  # noqa: S608
        db.execute(
            f"SELECT body, status FROM alerts {where} ORDER BY {order} DESC, ts DESC LIMIT 50",  # noqa: S608
            (user,),
        ).fetchall()

    def timeline() -> None:
        db.execute(
            "SELECT agent_id, sequence, data FROM events WHERE user_name = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts DESC LIMIT 101",
            (user, since, until),
        ).fetchall()
        db.execute(
            "SELECT substr(ts, 1, 10), data FROM events WHERE user_name = ? AND ts >= ? AND ts < ?"
            " AND action = 'file.write' AND device_serial <> ''",
            (user, since, until),
        ).fetchall()
        db.execute(
            f"SELECT body, status FROM alerts WHERE ts >= ? AND ts < ? AND {user_field} = ?"  # noqa: S608
            " ORDER BY ts DESC LIMIT 500",
            (since, until, user),
        ).fetchall()

    return {"queue": queue, "queue_filtered": queue_filtered, "timeline": timeline}


def main() -> None:
    """Fill, serve, measure, print."""
    parser = _cli.parser("console", __doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--alerts", type=int, default=2_000)
    parser.add_argument("--full", action="store_true", help="1,000,000 events and 10,000 alerts")
    parser.add_argument("--requests", type=int, default=40, help="requests per page")
    args = parser.parse_args()
    events, alerts = (1_000_000, 10_000) if args.full else (args.events, args.alerts)
    now = dt.datetime.now(dt.UTC)
    user = "user042"
    with tempfile.TemporaryDirectory(prefix="exfilguard-bench-console-") as tmp:
        path = Path(tmp) / "collector.db"
        started = time.perf_counter()
        fill(path, events, alerts, now)
        fill_s = time.perf_counter() - started
        store = SqliteStore(path)
        started = time.perf_counter()
        queries.ensure_indexes(store)
        index_s = time.perf_counter() - started
        store.close()
        print(f"store: {events:,} events, {alerts:,} alerts in {fill_s:.1f} s; indexes in {index_s:.1f} s")

        console = RunningConsole(str(path), Path(tmp) / "state")
        console.start()
        try:
            client = Browserless(console)
            client.login("bench")
            pages = {
                "queue": "/alerts",
                "queue_filtered": f"/alerts?user={user}&severity=high&severity=critical&sort=severity",
                "timeline": f"/timeline/user/{user}",
            }
            bare = _bare(path, user, now)
            figures: dict[str, Any] = {"events": events, "alerts": alerts, "fill_s": round(fill_s, 1),
                                       "index_s": round(index_s, 1)}  # fmt: skip
            for name, page in pages.items():
                answer = client.request("GET", page)
                assert answer.status == 200, (page, answer.status, answer.body[:300])
                # Interleaved rounds, so a burst of load from other work hits both sides alike.
                ours: list[float] = []
                base: list[float] = []
                for _ in range(args.requests // 10):
                    ours += _timed(lambda page=page: client.request("GET", page), 10)  # type: ignore[misc]
                    base += _timed(bare[name], 10)
                figures[f"{name}_p95_ms"] = round(_p95(ours), 1)
                figures[f"{name}_bare_p95_ms"] = round(_p95(base), 2)
                figures[f"{name}_ratio"] = round(_p95(ours) / max(_p95(base), 1e-3), 1)
                print(
                    f"{name:15s} page p95 {figures[f'{name}_p95_ms']:7.1f} ms   bare SQL p95 "
                    f"{figures[f'{name}_bare_p95_ms']:7.2f} ms   ratio {figures[f'{name}_ratio']:6.1f}"
                )
        finally:
            console.stop()
        figures["under_300ms"] = all(figures[f"{n}_p95_ms"] < 300 for n in pages)
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
