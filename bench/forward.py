"""Event forwarding throughput as a ratio of the real collector's ingest in the same run, alone and racing it.

    python -m bench.forward [--events N] [--repeat R] [--outage SECONDS] [--long-outage]

One collector as shipped (`python -m collector.main`: gRPC, checks, the store, acks, the sealer,
the shipped policy pack in its policy process, the forward process with its helpers) with two
`forward:` destinations:
  - `_bulk` (ECS) to a loopback HTTP receiver answering like Elasticsearch, and
  - syslog over TLS (RFC 5425, OCSF) to a real rsyslogd, its file counted at the end.
Simulated agents send real gRPC batches (500 events) from load-generator processes (bench.ingest's),
each waiting for acks as the agent's transport does.

Each round, in the same collector (N = --events):
 1. backlog: both destinations are away (rsyslogd stopped, the receiver answering 503) while 2N
    events are ingested: `ingest_eps`, the collector's ack rate with forwarding idle (the baseline).
 2. alone: each destination comes back by itself (the other stays away) and forwards N events of
    its backlog with nothing else running, timed after its first batch: `forward_*_eps`; over the
    baseline, `forward_*_ratio` (each path had the machine to itself).
 3. race: both back, new agents send another N events. In that window (the agents' release to
    the last ack) ingest runs flat out while forwarding works through its backlog and what
    arrives, on the same cores, as in a live collector. `race_*_ratio`: the events a destination
    forwarded in the window over the events stored in it (its rate over ingest's, in the same
    seconds): at >= 1.0 its lag shrinks while ingest runs at full speed. A destination that ran
    out of backlog in the window is marked `race_drained_*` (its figure then a lower bound).
    `race_ingest_eps` against `ingest_eps` shows whether forwarding slows ingest.
Of --repeat rounds the best rate of each path is kept (the machine is shared: load comes and goes),
and the best race ratio.

Outage (after the last round): rsyslogd is stopped, N/2 events are ingested while it is down
(default 5 s; 60 s with --long-outage), then it is started again; we measure its lag (events)
when it comes back, the time to catch up, and the exact counts: events stored, distinct events
rsyslog wrote (must be all of them, over every round: `lost` must be 0; the `_bulk` receiver's
are checked too, `lost_http`) and duplicates (at least once may resend a batch).

Last line: JSON with forward_http_ratio, forward_syslog_ratio, ingest_eps, forward_http_eps,
forward_syslog_eps, race_http_ratio, race_syslog_ratio, race_ingest_eps, race_forward_cores (the
CPU the forward process and its helpers had in the race, in cores), forward_cpu_us_http and
forward_cpu_us_syslog (the CPU of the forward process and its helpers per event forwarded alone, in
microseconds, the least of the rounds: the steady figure on a shared machine), race_drained_http,
race_drained_syslog, outage_seconds, lag_after_outage_events, catch_up_seconds, stored,
delivered_syslog_distinct, lost, lost_http, duplicates.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import _cli
from bench.ingest import run_load
from bench.policy import PACK
from collector.store import open_store
from collector.store.cursors import CursorBook
from tests.helpers import CollectorProcess, start_collector, write_collector_config
from tests.siem.receivers import HttpReceiver
from tests.siem.rsyslog import Rsyslog, RsyslogUnavailable

AGENTS = 4
BATCH = 500
DESTINATIONS = {"http": "es", "syslog": "siem"}  # the figures' key -> the destination's name
SAMPLE_SECONDS = 0.02


def forward_config(http: HttpReceiver, rsyslog: Rsyslog) -> list[dict[str, Any]]:
    """collector.yaml's `forward:`: `_bulk` (ECS) and rsyslog over TLS (OCSF)."""
    return [
        {"name": "es", "type": "elasticsearch", "url": http.url, "format": "ecs", "batch_size": BATCH,
         "timeout_seconds": 30, "retry_max_seconds": 0.5},
        {"name": "siem", "type": "syslog", "address": rsyslog.address, "transport": "tls",
         "ca": str(rsyslog.ca_path), "format": "ocsf", "batch_size": BATCH, "retry_max_seconds": 0.5},
    ]  # fmt: skip


class Cursors(threading.Thread):
    """Samples every destination's forwarded events (its cursors in the store) and the stored ones."""

    def __init__(self, location: str) -> None:
        super().__init__(daemon=True)
        self.store = open_store(location, readonly=True)
        self.book = CursorBook(self.store.domain(), self.store.domain())  # read only: nothing saved
        self.times: list[float] = []
        self.samples: list[dict[str, int]] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def now(self) -> dict[str, int]:
        """Events each destination took, and `stored`, read now."""
        counts = {name: sum(self.book.load(name).values()) for name in DESTINATIONS.values()}
        counts["stored"] = sum(self.book.heads().values())
        return counts

    def run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            at, counts = time.time(), self.now()
            with self._lock:
                self.times.append(at)
                self.samples.append(counts)

    def at(self, moment: float) -> dict[str, int]:
        """The last sample taken at or before `moment` (wall clock)."""
        with self._lock:
            index = bisect.bisect_right(self.times, moment) - 1
            return self.samples[max(0, index)]

    def wait(self, done: Callable[[dict[str, int]], bool], what: str, timeout: float = 600) -> float:
        """Poll until `done(counts)`; the wall time it was first seen."""
        deadline = time.monotonic() + timeout
        while not done(counts := self.now()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not in {timeout:.0f} s ({counts})")
            time.sleep(0.005)
        return time.time()

    def close(self) -> None:
        self.done.set()
        self.join()
        self.store.close()


class Bench:
    """One collector, its receivers, and the load: each round's figures."""

    def __init__(self, args: argparse.Namespace, root: Path, rsyslog: Rsyslog, http: HttpReceiver) -> None:
        self.args, self.rsyslog, self.http = args, rsyslog, http
        self.per_agent: int = max(1, args.events // (AGENTS * BATCH)) * BATCH
        self.total: int = self.per_agent * AGENTS
        config = write_collector_config(
            root / "collector", log_level="error", max_streams=10_000, policies=[str(PACK)],
            policy_rebuild_hours=0, forward=forward_config(http, rsyslog),
        )  # fmt: skip
        self.collector: CollectorProcess = start_collector(config)
        self.cursors = Cursors(str(root / "collector" / "collector.db"))
        self.cursors.start()
        self.agents = 0  # agents used so far: each load takes new ones (their ids and sequences)

    def ingest(self, events: int, on_go: Callable[[], None] | None = None) -> tuple[float, float]:
        """`events` more events from AGENTS new agents: (the load's start, its last ack), wall clock."""
        load = argparse.Namespace(agents=AGENTS, workers=2, batches=max(1, events // (AGENTS * BATCH)),
                                  batch_size=BATCH, window=8)  # fmt: skip
        run = run_load(load, self.collector.address, self.collector.pid, on_go, first_agent=self.agents)
        self.agents += AGENTS
        return run.started, max(r["end"] for r in run.results)

    def cpu(self) -> float:
        """CPU seconds of the forward process and its helpers so far."""
        total = 0.0
        for child in psutil.Process(self.collector.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                command = " ".join(child.cmdline())
                if "collector.forward.process" in command or "multiprocessing" in command:  # or a helper
                    total += sum(child.cpu_times()[:2])
        return total

    def drained(self) -> float:
        """Wall time every destination had taken every stored event."""
        return self.cursors.wait(lambda c: all(c[n] >= c["stored"] for n in DESTINATIONS.values()), "drain")

    def away(self, key: str) -> None:
        """The destination stops taking events (rsyslogd once it wrote what it took: a receiver
        killed with messages in its socket buffer loses them, which no syslog sender can see)."""
        if key == "http":
            self.http.mode = "status:503"
            return
        taken = self.cursors.now()["siem"]
        deadline = time.monotonic() + 60
        while _line_count(self.rsyslog.out) < taken and time.monotonic() < deadline:
            time.sleep(0.05)
        self.rsyslog.stop()

    def back(self, key: str) -> float:
        """The destination takes events again; returns (the wall time) once it has taken a batch."""
        name = DESTINATIONS[key]
        before = self.cursors.now()[name]
        if key == "http":
            self.http.mode = "ok"
        else:
            self.rsyslog.restart()
        return self.cursors.wait(lambda c: c[name] > before, f"{name}'s first batch")

    def alone(self, key: str) -> tuple[float, float]:
        """The destination back with nothing else running: events/s over `total` events of its
        backlog, and the forward process's CPU (with its helpers') per event in microseconds."""
        name = DESTINATIONS[key]
        started = self.back(key)
        first, cpu = self.cursors.now()[name], self.cpu()
        done = self.cursors.wait(lambda c: c[name] >= first + self.total, f"{name} alone")
        forwarded = self.cursors.now()[name] - first
        return self.total / (done - started), (self.cpu() - cpu) / forwarded * 1e6

    def round(self) -> dict[str, float]:
        """Backlog with the destinations away; each alone; then the race. This round's figures."""
        self.drained()
        for key in DESTINATIONS:
            self.away(key)
        started, last_ack = self.ingest(2 * self.total)
        figures = {"ingest_alone": 2 * self.total / (last_ack - started)}
        figures["http"], figures["cpu_us_http"] = self.alone("http")
        self.away("http")
        figures["syslog"], figures["cpu_us_syslog"] = self.alone("syslog")
        released: list[tuple[float, float]] = []
        _, last_ack = self.ingest(self.total, on_go=lambda: released.append((self.back("http"), self.cpu())))
        started, cpu = released[0]
        seconds = last_ack - started
        figures["race_forward_cores"] = (self.cpu() - cpu) / (time.time() - started)
        first, last = self.cursors.at(started), self.cursors.at(last_ack)
        figures["ingest"] = (last["stored"] - first["stored"]) / seconds
        for key, name in DESTINATIONS.items():
            figures[f"race_{key}"] = (last[name] - first[name]) / seconds
            figures[f"drained_{key}"] = float(last[name] >= last["stored"])
        self.drained()
        return figures

    def outage(self, seconds: float) -> dict[str, Any]:
        """rsyslogd away while events arrive: its lag when it returns, and the time to catch up."""
        self.away("syslog")
        down_at = time.monotonic()
        self.ingest(max(AGENTS * BATCH, self.total // 2))
        time.sleep(max(0.0, seconds - (time.monotonic() - down_at)))
        counts = self.cursors.now()
        lag = counts["stored"] - counts["siem"]
        self.rsyslog.restart()
        back_at = time.time()
        caught_up = self.cursors.wait(lambda c: c["siem"] >= counts["stored"], "catch-up after the outage")
        return {"lag_after_outage_events": lag, "catch_up_seconds": round(caught_up - back_at, 3)}

    def counts(self) -> dict[str, Any]:
        """Every stored event against what each receiver holds: lost and duplicates."""
        self.drained()
        store = open_store(str(self.cursors.store.location), readonly=True)
        try:
            stored = {str(m["event.id"]) for m in store.events()}
        finally:
            store.close()
        wanted = set(stored)
        deadline = time.monotonic() + 60  # rsyslogd writes its file a little after it took the messages
        while (ids := syslog_ids(self.rsyslog)) and not wanted <= set(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        counted = Counter(ids)
        return {
            "stored": len(stored),
            "delivered_syslog_distinct": len(counted),
            "lost": len(stored - set(counted)),
            "lost_http": len(stored - http_ids(self.http)),
            "duplicates": sum(n - 1 for n in counted.values() if n > 1),
        }

    def close(self) -> None:
        self.cursors.close()
        code = self.collector.stop()
        if code != 0:
            log = self.collector.log()[-2000:]
            print(f"bench.forward: the collector exited with {code}:\n{log}", file=sys.stderr)


def _line_count(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as lines:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: lines.read(1 << 20), b""))


def syslog_ids(receiver: Rsyslog) -> list[str]:
    """The event ids (OCSF metadata.uid) of every message rsyslogd wrote, resent ones again."""
    return [orjson.loads(line)["metadata"]["uid"] for line in receiver.lines() if line.startswith("{")]


def http_ids(receiver: HttpReceiver) -> set[str]:
    """The `_id`s of every `create` the `_bulk` receiver took."""
    ids = set()
    for request in receiver.accepted:
        for line in request.body.splitlines()[0::2]:
            ids.add(str(orjson.loads(line)["create"]["_id"]))
    return ids


def run(args: argparse.Namespace, root: Path, rsyslog: Rsyslog, http: HttpReceiver) -> dict[str, Any]:
    """Every round, the outage and the counts; the JSON figures."""
    bench = Bench(args, root, rsyslog, http)
    best: dict[str, float] = {}
    try:
        for n in range(max(1, args.repeat)):
            f = bench.round()
            ingest = f["ingest_alone"]
            print(
                f"round {n + 1}: ingest alone {ingest:,.0f} events/s; forwarding alone: _bulk (ecs) "
                f"{f['http']:,.0f} = {f['http'] / ingest:.2f}x, rsyslog TLS (ocsf) {f['syslog']:,.0f} = "
                f"{f['syslog'] / ingest:.2f}x; race: ingest {f['ingest']:,.0f} events/s while both forwarded "
                f"{f['race_http'] / f['ingest']:.2f}x and {f['race_syslog'] / f['ingest']:.2f}x of it "
                f"(forward process: {f['race_forward_cores']:.2f} cores); forward CPU alone: _bulk "
                f"{f['cpu_us_http']:.1f} us/event, syslog {f['cpu_us_syslog']:.1f} us/event",
                flush=True,
            )
            ratios = {  # a race's rates are of one window: its ratio is the round's
                "race_http_ratio": f["race_http"] / f["ingest"],
                "race_syslog_ratio": f["race_syslog"] / f["ingest"],
            }
            for key, value in {**f, **ratios}.items():
                pick = min if key.startswith("cpu_us_") else max  # the least CPU: the least disturbed round
                best[key] = pick(best.get(key, value), value)
        outage = 60.0 if args.long_outage else args.outage
        after = bench.outage(outage)
        counts = bench.counts()
    finally:
        bench.close()
    print(
        f"best of {args.repeat}: ingest alone {best['ingest_alone']:,.0f} events/s; forwarding alone: "
        f"_bulk {best['http'] / best['ingest_alone']:.2f}x, rsyslog TLS "
        f"{best['syslog'] / best['ingest_alone']:.2f}x; race: "
        f"{best['race_http_ratio']:.2f}x, {best['race_syslog_ratio']:.2f}x (ingest {best['ingest']:,.0f})\n"
        f"outage {outage:.0f} s: {after['lag_after_outage_events']} events behind when rsyslog came back, "
        f"caught up in {after['catch_up_seconds']:.2f} s; stored {counts['stored']}, rsyslog wrote "
        f"{counts['delivered_syslog_distinct']} distinct ({counts['duplicates']} duplicates), lost "
        f"{counts['lost']} (_bulk: {counts['lost_http']})"
    )
    return {
        "forward_http_ratio": round(best["http"] / best["ingest_alone"], 3),
        "forward_syslog_ratio": round(best["syslog"] / best["ingest_alone"], 3),
        "ingest_eps": round(best["ingest_alone"]),
        "forward_http_eps": round(best["http"]),
        "forward_syslog_eps": round(best["syslog"]),
        "race_http_ratio": round(best["race_http_ratio"], 3),
        "race_syslog_ratio": round(best["race_syslog_ratio"], 3),
        "race_ingest_eps": round(best["ingest"]),
        "race_forward_cores": round(best["race_forward_cores"], 2),
        "forward_cpu_us_http": round(best["cpu_us_http"], 1),
        "forward_cpu_us_syslog": round(best["cpu_us_syslog"], 1),
        "race_drained_http": bool(best["drained_http"]),
        "race_drained_syslog": bool(best["drained_syslog"]),
        "outage_seconds": outage,
        **after,
        **counts,
    }


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = _cli.parser("forward", __doc__)
    parser.add_argument("--events", type=int, default=30_000, help="events of each phase of a round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best figure of each is kept")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the syslog receiver is down")
    parser.add_argument("--long-outage", action="store_true", help="a 60 s outage")
    args = parser.parse_args()
    root = _cli.scratch("forward")
    try:
        rsyslog = Rsyslog.start(root / "rsyslog")
    except RsyslogUnavailable as exc:
        print(f"bench.forward: {exc}", file=sys.stderr)
        return 1
    http = HttpReceiver()
    try:
        figures = run(args, root, rsyslog, http)
    finally:
        http.close()
        rsyslog.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(orjson.dumps(figures).decode())
    return 0 if figures["lost"] == 0 and figures["lost_http"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
