"""Event forwarding throughput as a ratio of ingest, and the catch-up after a destination outage.

    python -m bench.forward [--events N] [--repeat R] [--outage SECONDS] [--long-outage]

Baseline (same run, same store file): ingest of N events as the collector's acker does it: the
real store (`SqliteStore.ingest_batches`, 500-event batches of 4 agents, fsync per commit).
Ours: the collector's forward process (`python -m collector.forward.process`, started as the
collector starts it, on its own core) catching up on the same N stored events from a fresh
cursor, reading them from the store and turning each into its format's JSON, to
  - a loopback HTTP receiver answering like Elasticsearch `_bulk` (ECS), and
  - a real rsyslogd over TLS (RFC 5425, OCSF), its file counted at the end,
one destination at a time. Its rate is taken from the cursors in the store: the events after
its first batch over the time from that batch's cursor to the last one (the process's start
is not forwarding). A ratio >= 1.0 means forwarding keeps up with ingest. Each round has a
fresh store; of --repeat rounds the best time of each path is kept (the machine is shared:
load comes and goes between phases). Also shown: `_bulk` again (a second destination after
the other two: how much the figures move within a round).

Outage: rsyslogd is stopped, M events are ingested while it is down (default 5 s; 60 s with
--long-outage), then it is started again; we measure the lag (events) when it comes back, the
time to catch up, and the exact counts: events stored, distinct events rsyslog wrote (must be
all of them, over every round: `lost` must be 0) and duplicates (at least once may resend a batch).

Last line: JSON with forward_http_ratio, forward_syslog_ratio, ingest_eps, forward_http_eps,
forward_syslog_eps, forward_store_ratio, outage_seconds, lag_after_outage_events, catch_up_seconds, stored,
delivered_syslog_distinct, lost, duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from collector.config import CollectorConfig, Destination, HttpDestination, SyslogDestination
from collector.forward.process import ForwardProcess
from collector.store.cursors import CursorBook
from collector.store.sqlite import SqliteStore
from tests.helpers import make_event
from tests.siem.receivers import HttpReceiver
from tests.siem.rsyslog import Rsyslog, RsyslogUnavailable

AGENTS = 4
BATCH = 500


def ingest(store: SqliteStore, first: int, last: int) -> float:
    """Store events first..last of each agent in 500-event group commits, as the collector does.
    Seconds taken (events pre-built)."""
    batches = []
    for start in range(first, last + 1, BATCH // AGENTS):
        end = min(last, start + BATCH // AGENTS - 1)
        batches.append(
            [
                (f"agent-{a}", [make_event(f"agent-{a}", s) for s in range(start, end + 1)])
                for a in range(AGENTS)
            ]
        )
    started = time.perf_counter()
    for group in batches:
        store.ingest_batches(group, seal=False)  # the collector seals in a process of its own
    return time.perf_counter() - started


def syslog_ids(receiver: Rsyslog) -> list[str]:
    out = []
    for line in receiver.lines():
        if line.startswith("{"):
            out.append(json.loads(line)["metadata"]["uid"])
    return out


def destinations(http: HttpReceiver, rsyslog: Rsyslog) -> dict[str, Destination]:
    """The measured paths: `_bulk` (ECS), rsyslog over TLS (OCSF), `_bulk` again."""
    bulk: dict[str, Any] = {"type": "elasticsearch", "url": http.url, "timeout_seconds": 30}
    tls: dict[str, Any] = {"address": rsyslog.address, "protocol": "tls", "ca": str(rsyslog.ca_path)}
    return {
        "http": HttpDestination(name="es", batch_size=BATCH, **bulk),
        "syslog": SyslogDestination(
            name="siem", type="syslog", format="ocsf", batch_size=BATCH, retry_max_seconds=0.5, **tls
        ),
        "store": HttpDestination(name="es-again", batch_size=BATCH, **bulk),
    }


class Round:
    """One store: ingest, then each destination's forward process catching up, each timed."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.path = root / "store.db"
        self.store = SqliteStore(self.path)
        self.reader = SqliteStore(self.path, readonly=True)
        self.book = CursorBook(self.reader.domain(), self.store.domain())

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, untimed: otherwise the first forward process's
        first cursor save pays for the checkpoint the ingest left due (thousands of pages)."""
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def forwarded(self, name: str) -> int:
        """Events the destination took, from its cursors in the store."""
        return sum(self.book.load(name).values())

    def stored(self) -> int:
        """Events stored (every agent's stored prefix)."""
        return sum(self.book.heads().values())

    async def forward(self, spec: Destination, total: int) -> tuple[float, ForwardProcess]:
        """Start a forward process for `spec`; seconds it takes for `total` events at the rate it
        forwards after its first batch (and the process, still running)."""
        config = CollectorConfig(store=str(self.path), forward=[spec], log_level="error")
        child = ForwardProcess(config)
        await child.open()
        first_at, first = 0.0, 0
        deadline = time.monotonic() + 600
        while (done := self.forwarded(spec.name)) < total:
            if not first and done:
                first_at, first = time.perf_counter(), done
            if time.monotonic() > deadline:
                raise TimeoutError(f"forwarding to {spec.name} did not finish")
            await asyncio.sleep(0.002)
        if not first or first >= total:
            raise ValueError(f"--events must be well above one batch ({BATCH})")
        return total * (time.perf_counter() - first_at) / (total - first), child

    def close(self) -> None:
        self.reader.close()
        self.store.close()


async def run(args: argparse.Namespace, root: Path, rsyslog: Rsyslog, http: HttpReceiver) -> dict[str, Any]:
    outage = 60.0 if args.long_outage else args.outage
    per_agent = max(1, args.events // AGENTS)
    total = per_agent * AGENTS
    specs = destinations(http, rsyslog)
    best: dict[str, float] = {}
    rounds: list[Round] = []
    siem: ForwardProcess | None = None
    try:
        for n in range(max(1, args.repeat)):
            rounds.append(Round(root / f"round-{n}"))
            seconds = {"ingest": ingest(rounds[-1].store, 1, per_agent)}
            rounds[-1].checkpoint()
            for key, spec in specs.items():
                seconds[key], child = await rounds[-1].forward(spec, total)
                if key == "syslog" and n == args.repeat - 1:
                    siem = child  # kept running for the outage
                else:
                    await child.aclose()
            line = ", ".join(f"{k} {total / v:,.0f} events/s" for k, v in seconds.items())
            print(f"round {n + 1}: {line}", flush=True)
            for key, value in seconds.items():
                best[key] = min(best.get(key, value), value)
        rate = {key: total / value for key, value in best.items()}
        print(
            f"best of {len(rounds)}: ingest as the collector's acker does it {rate['ingest']:,.0f} events/s "
            f"(baseline); forward process: _bulk (ecs) {rate['http']:,.0f} = "
            f"{rate['http'] / rate['ingest']:.2f}x; rsyslog TLS (ocsf) {rate['syslog']:,.0f} = "
            f"{rate['syslog'] / rate['ingest']:.2f}x; _bulk again {rate['store']:,.0f} = "
            f"{rate['store'] / rate['ingest']:.2f}x"
        )

        # The outage: the receiver goes away while agents keep sending (the last round's store).
        last = rounds[-1]
        assert siem is not None
        rsyslog.stop()
        down_at = time.perf_counter()
        more = max(1, per_agent // 2)
        ingest(last.store, per_agent + 1, per_agent + more)
        await siem.on_stored(())  # the collector wakes it after each commit
        await asyncio.sleep(max(0.0, outage - (time.perf_counter() - down_at)))
        lag = last.stored() - last.forwarded("siem")
        failures = siem.figures().get("siem", {}).get("failures", {})
        rsyslog.restart()
        back_at = time.perf_counter()
        heads = last.stored()
        while last.forwarded("siem") < heads and time.perf_counter() - back_at < 600:
            await asyncio.sleep(0.01)  # the cursors: cheap to watch (reading rsyslog's file is not)
        catch_up = time.perf_counter() - back_at
        stored_ids = {str(m["event.id"]) for r in rounds for m in r.store.events()}
        deadline = time.monotonic() + 60  # then every event must be in rsyslog's file
        while not stored_ids <= set(syslog_ids(rsyslog)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    finally:
        if siem is not None:
            await siem.aclose()
        for r in rounds:
            r.close()
    ids = syslog_ids(rsyslog)
    distinct = len(set(ids))
    duplicates = sum(n - 1 for n in Counter(ids).values() if n > 1)
    lost = len(stored_ids - set(ids))
    print(
        f"outage {outage:.0f} s: {lag} events behind when rsyslog came back, caught up in "
        f"{catch_up:.2f} s; stored {len(stored_ids)} (all rounds), rsyslog wrote {distinct} distinct "
        f"({duplicates} duplicates), lost {lost}; failures while it was down {failures}"
    )
    return {
        "forward_http_ratio": round(rate["http"] / rate["ingest"], 3),
        "forward_syslog_ratio": round(rate["syslog"] / rate["ingest"], 3),
        "ingest_eps": round(rate["ingest"]),
        "forward_http_eps": round(rate["http"]),
        "forward_syslog_eps": round(rate["syslog"]),
        "forward_store_ratio": round(rate["store"] / rate["ingest"], 3),
        "outage_seconds": outage,
        "lag_after_outage_events": lag,
        "catch_up_seconds": round(catch_up, 3),
        "stored": len(stored_ids),
        "delivered_syslog_distinct": distinct,
        "lost": lost,
        "duplicates": duplicates,
    }


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="events ingested and forwarded per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each path is kept")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the syslog receiver is down")
    parser.add_argument("--long-outage", action="store_true", help="a 60 s outage (the issue's figure)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        root = Path(tmp)
        try:
            rsyslog = Rsyslog.start(root / "rsyslog")
        except RsyslogUnavailable as exc:
            print(f"bench.forward: {exc}", file=sys.stderr)
            return 1
        http = HttpReceiver()
        try:
            figures = asyncio.run(run(args, root, rsyslog, http))
        finally:
            http.close()
            rsyslog.stop()
    print(json.dumps(figures))
    return 0 if figures["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
