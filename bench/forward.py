"""Event forwarding throughput as a ratio of ingest, and the catch-up after a destination outage.

    python -m bench.forward [--events N] [--outage SECONDS] [--long-outage]

Baseline (same run, same store file): ingest of N events as the collector does it: the real
store (`SqliteStore.ingest_batches`, 500-event batches of 4 agents, fsync per commit) and the
ECS mapping of each stored event for the listeners (`to_mapping`, which the collector's ingest
makes for the policy engine), offered to the forwarding workers. Ours: ForwardWorkers
(collector/forward/) streaming the same N stored events from their cursors, formatted, to
  - a loopback HTTP receiver answering like Elasticsearch `_bulk` (ECS), and
  - a real rsyslogd over TLS (RFC 5425, OCSF), its file counted at the end;
each until the destination has all N. A ratio >= 1.0 means forwarding keeps up with ingest.
Also shown: `_bulk` from the store alone (no mappings held: the rows decoded again), the rate
of a catch-up longer than what the workers hold in memory (MAX_RECENT events).

Outage: rsyslogd is stopped, M events are ingested while it is down (default 5 s; 60 s with
--long-outage), then it is started again; we measure the lag (events) when it comes back, the
time to catch up, and the exact counts: events stored, distinct events rsyslog wrote (must be
all of them: `lost` must be 0) and duplicates (at least once may resend a batch).

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
from protos.events import to_mapping
from tests.helpers import make_event
from tests.siem.receivers import HttpReceiver
from tests.siem.rsyslog import Rsyslog, RsyslogUnavailable

AGENTS = 4
BATCH = 500


def ingest(store: SqliteStore, first: int, last: int, workers: Sequence[ForwardWorker] = ()) -> float:
    """Store events first..last of each agent in 500-event group commits, as the collector does:
    each stored event mapped once for the listeners (to_mapping), the mappings offered to the
    forwarding workers. Seconds taken (events pre-built)."""
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
        results = store.ingest_batches(group, seal=False)  # the collector seals in a process of its own
        mappings = [to_mapping(e) for r in results for e in r.stored]
        for worker in workers:
            worker.offer(mappings)
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


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events ingested and forwarded")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the syslog receiver is down")
    parser.add_argument("--long-outage", action="store_true", help="a 60 s outage (the issue's figure)")
    args = parser.parse_args()
    outage = 60.0 if args.long_outage else args.outage
    per_agent = max(1, args.events // AGENTS)
    total = per_agent * AGENTS
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        root = Path(tmp)
        try:
            rsyslog = Rsyslog.start(root / "rsyslog")
        except RsyslogUnavailable as exc:
            print(f"bench.forward: {exc}", file=sys.stderr)
            return 1
        store = SqliteStore(root / "store.db")
        reader = SqliteStore(root / "store.db", readonly=True)
        http = HttpReceiver()
        try:

            def book() -> CursorBook:
                return CursorBook(reader.domain(), store.domain())

            es = ForwardWorker(
                "es", HttpDestination("elasticsearch", http.url, timeout=30), book(), "ecs", batch_size=BATCH
            )
            wire = SyslogTransport(rsyslog.address, "tls", ca=str(rsyslog.ca_path), timeout=30)
            siem = ForwardWorker(
                "siem", SyslogDestination(wire), book(), "ocsf", batch_size=BATCH, retry_max=0.5
            )
            ingest_s = ingest(store, 1, per_agent, (es, siem))
            ingest_eps = total / ingest_s
            print(
                f"ingest (store + the listeners' mappings, as the collector): {total} events in "
                f"{ingest_s:.2f} s = {ingest_eps:,.0f} events/s (baseline)"
            )
            http_s = run_until(es, lambda: es.cursors and sum(es.cursors.values()) >= total)
            es.stop()
            http_eps = total / http_s
            http_docs = sum(len(r.lines()) // 2 for r in http.accepted)
            print(
                f"http _bulk (ecs): {http_docs} events in {http_s:.2f} s = {http_eps:,.0f} events/s, "
                f"ratio {http_eps / ingest_eps:.2f}"
            )
            syslog_s = run_until(siem, lambda: siem.cursors and sum(siem.cursors.values()) >= total)
            syslog_eps = total / syslog_s
            print(
                f"rsyslog TLS (ocsf): {len(rsyslog.lines())} events in {syslog_s:.2f} s = "
                f"{syslog_eps:,.0f} events/s, ratio {syslog_eps / ingest_eps:.2f}"
            )
            # From the store alone (a destination catching up after an outage longer than the
            # mappings held in memory): every row decoded again.
            cold_http = HttpDestination("elasticsearch", http.url, timeout=30)
            cold = ForwardWorker("cold", cold_http, book(), "ecs", batch_size=BATCH)
            cold_s = run_until(cold, lambda: cold.cursors and sum(cold.cursors.values()) >= total)
            cold.stop()
            cold_eps = total / cold_s
            print(
                f"http _bulk (ecs) from the store only: {total} events in {cold_s:.2f} s = "
                f"{cold_eps:,.0f} events/s, ratio {cold_eps / ingest_eps:.2f}"
            )

            # The outage: the receiver goes away while agents keep sending.
            while siem.lag_events:
                time.sleep(0.05)
            rsyslog.stop()
            down_at = time.perf_counter()
            more = max(1, per_agent // 4)
            ingest(store, per_agent + 1, per_agent + more, (siem,))
            stored = (per_agent + more) * AGENTS
            siem.wake()
            time.sleep(max(0.0, outage - (time.perf_counter() - down_at)))
            lag = sum(book().heads().values()) - sum(siem.cursors.values())
            rsyslog.restart()
            back_at = time.perf_counter()
            while len(set(syslog_ids(rsyslog))) < stored and time.perf_counter() - back_at < 600:
                time.sleep(0.02)
            catch_up = time.perf_counter() - back_at
            siem.stop()
            ids = syslog_ids(rsyslog)
            distinct = len(set(ids))
            duplicates = sum(n - 1 for n in Counter(ids).values() if n > 1)
            stored_ids = {str(m["event.id"]) for m in store.events()}
            lost = len(stored_ids - set(ids))
            print(
                f"outage {outage:.0f} s: {lag} events behind when rsyslog came back, caught up in "
                f"{catch_up:.2f} s; stored {stored}, rsyslog wrote {distinct} distinct "
                f"({duplicates} duplicates), lost {lost}; failures {siem.failures}"
            )
        finally:
            http.close()
            rsyslog.stop()
            reader.close()
            store.close()
    figures = {
        "forward_http_ratio": round(http_eps / ingest_eps, 3),
        "forward_syslog_ratio": round(syslog_eps / ingest_eps, 3),
        "ingest_eps": round(ingest_eps),
        "forward_http_eps": round(http_eps),
        "forward_syslog_eps": round(syslog_eps),
        "forward_store_ratio": round(cold_eps / ingest_eps, 3),
        "outage_seconds": outage,
        "lag_after_outage_events": lag,
        "catch_up_seconds": round(catch_up, 3),
        "stored": stored,
        "delivered_syslog_distinct": distinct,
        "lost": lost,
        "duplicates": duplicates,
    }
    print(json.dumps(figures))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
