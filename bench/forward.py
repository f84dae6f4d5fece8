"""Event forwarding throughput as a ratio of ingest, and the catch-up after a destination outage.

    python -m bench.forward [--events N] [--repeat R] [--outage SECONDS] [--long-outage]

Baseline (same run, same store file): ingest of N events as the collector's acker does it: the
real store (`SqliteStore.ingest_batches`, 500-event batches of 4 agents, fsync per commit; the
forwarding workers are only woken). Ours: ForwardWorkers (collector/forward/) streaming the same
N stored events from their cursors (read from the store, each turned into its format's JSON), to
  - a loopback HTTP receiver answering like Elasticsearch `_bulk` (ECS), and
  - a real rsyslogd over TLS (RFC 5425, OCSF), its file counted at the end;
each until the destination has all N. A ratio >= 1.0 means forwarding keeps up with ingest.
Each round has a fresh store; of --repeat rounds the best time of each path is kept (the
machine is shared: load comes and goes between phases).
Also shown: `_bulk` by a second worker after the first (the same path: a check of the noise).

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
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector.forward.destinations import HttpDestination, SyslogDestination
from collector.forward.syslog import SyslogTransport
from collector.forward.worker import ForwardWorker
from collector.store.cursors import CursorBook
from collector.store.sqlite import SqliteStore
from tests.helpers import make_event
from tests.siem.receivers import HttpReceiver
from tests.siem.rsyslog import Rsyslog, RsyslogUnavailable

AGENTS = 4
BATCH = 500


def ingest(store: SqliteStore, first: int, last: int, workers: Sequence[ForwardWorker] = ()) -> float:
    """Store events first..last of each agent in 500-event group commits, as the collector does,
    the forwarding workers woken. Seconds taken (events pre-built)."""
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
        for worker in workers:
            worker.wake()  # what Forwarding.on_stored does on the collector's loop
    return time.perf_counter() - started


def run_until(worker: ForwardWorker, done: Any, timeout: float = 600.0) -> float:
    """Start the worker; seconds until done() holds."""
    started = time.perf_counter()
    worker.start()
    while not done():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("forwarding did not finish")
        time.sleep(0.01)
    return time.perf_counter() - started


def syslog_ids(receiver: Rsyslog) -> list[str]:
    out = []
    for line in receiver.lines():
        if line.startswith("{"):
            out.append(json.loads(line)["metadata"]["uid"])
    return out


class Round:
    """One store and its workers: ingest, then each destination catching up, each timed."""

    def __init__(self, root: Path, rsyslog: Rsyslog, http: HttpReceiver) -> None:
        root.mkdir()
        self.store = SqliteStore(root / "store.db")
        self.reader = SqliteStore(root / "store.db", readonly=True)
        self.es = ForwardWorker(
            "es", HttpDestination("elasticsearch", http.url, timeout=30), self.book(), "ecs", batch_size=BATCH
        )
        wire = SyslogTransport(rsyslog.address, "tls", ca=str(rsyslog.ca_path), timeout=30)
        self.siem = ForwardWorker(
            "siem", SyslogDestination(wire), self.book(), "ocsf", batch_size=BATCH, retry_max=0.5
        )
        # The same path again, after the other two: how much the figures move within a round.
        self.cold = ForwardWorker(
            "cold",
            HttpDestination("elasticsearch", http.url, timeout=30),
            self.book(),
            "ecs",
            batch_size=BATCH,
        )

    def book(self) -> CursorBook:
        return CursorBook(self.reader.domain(), self.store.domain())

    def measure(self, per_agent: int) -> dict[str, float]:
        total = per_agent * AGENTS
        seconds = {"ingest": ingest(self.store, 1, per_agent, (self.es, self.siem))}
        for key, worker in (("http", self.es), ("syslog", self.siem), ("store", self.cold)):
            seconds[key] = run_until(worker, lambda w=worker: w.cursors and sum(w.cursors.values()) >= total)
        self.es.stop()
        self.cold.stop()
        return seconds

    def close(self) -> None:
        for worker in (self.es, self.siem, self.cold):
            worker.stop()
        self.reader.close()
        self.store.close()


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events ingested and forwarded per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each path is kept")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the syslog receiver is down")
    parser.add_argument("--long-outage", action="store_true", help="a 60 s outage (the issue's figure)")
    args = parser.parse_args()
    outage = 60.0 if args.long_outage else args.outage
    per_agent = max(1, args.events // AGENTS)
    total = per_agent * AGENTS
    best: dict[str, float] = {}
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        root = Path(tmp)
        try:
            rsyslog = Rsyslog.start(root / "rsyslog")
        except RsyslogUnavailable as exc:
            print(f"bench.forward: {exc}", file=sys.stderr)
            return 1
        http = HttpReceiver()
        try:
            for n in range(max(1, args.repeat)):
                rounds.append(Round(root / f"round-{n}", rsyslog, http))
                seconds = rounds[-1].measure(per_agent)
                line = ", ".join(f"{k} {total / v:,.0f} events/s" for k, v in seconds.items())
                print(f"round {n + 1}: {line}", flush=True)
                for key, value in seconds.items():
                    best[key] = min(best.get(key, value), value)
            rate = {key: total / value for key, value in best.items()}
            print(
                f"best of {len(rounds)}: ingest as the collector's acker does it (store, hand-off) "
                f"{rate['ingest']:,.0f} events/s (baseline); _bulk (ecs) {rate['http']:,.0f} = "
                f"{rate['http'] / rate['ingest']:.2f}x; rsyslog TLS (ocsf) {rate['syslog']:,.0f} = "
                f"{rate['syslog'] / rate['ingest']:.2f}x; _bulk again {rate['store']:,.0f} = "
                f"{rate['store'] / rate['ingest']:.2f}x"
            )

            # The outage: the receiver goes away while agents keep sending (the last round's store).
            last = rounds[-1]
            siem = last.siem
            while siem.lag_events:
                time.sleep(0.05)
            rsyslog.stop()
            down_at = time.perf_counter()
            more = max(1, per_agent // 2)
            ingest(last.store, per_agent + 1, per_agent + more, (siem,))
            siem.wake()
            time.sleep(max(0.0, outage - (time.perf_counter() - down_at)))
            lag = sum(last.book().heads().values()) - sum(siem.cursors.values())
            rsyslog.restart()
            back_at = time.perf_counter()
            heads = sum(last.book().heads().values())
            while sum(siem.cursors.values()) < heads and time.perf_counter() - back_at < 600:
                time.sleep(0.01)  # the cursors: cheap to watch (reading rsyslog's file is not)
            catch_up = time.perf_counter() - back_at
            stored_ids = {str(m["event.id"]) for r in rounds for m in r.store.events()}
            deadline = time.monotonic() + 60  # then every event must be in rsyslog's file
            while not stored_ids <= set(syslog_ids(rsyslog)) and time.monotonic() < deadline:
                time.sleep(0.5)
            siem.stop()
            ids = syslog_ids(rsyslog)
            distinct = len(set(ids))
            duplicates = sum(n - 1 for n in Counter(ids).values() if n > 1)
            lost = len(stored_ids - set(ids))
            print(
                f"outage {outage:.0f} s: {lag} events behind when rsyslog came back, caught up in "
                f"{catch_up:.2f} s; stored {len(stored_ids)} (all rounds), rsyslog wrote {distinct} distinct "
                f"({duplicates} duplicates), lost {lost}; failures {siem.failures}"
            )
        finally:
            for r in rounds:
                r.close()
            http.close()
            rsyslog.stop()
    figures = {
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
    print(json.dumps(figures))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
