"""Collector ingest throughput over real gRPC with acks, as a ratio to bare SQLite inserts of the same rows.

    python -m bench.ingest [--agents 8] [--batches 50] [--batch-size 500] [--workers 2] [--window 8]
                           [--metrics]

Two collectors are measured: the ingest path alone (no listeners: gRPC, checks, store, ack) and
the collector as shipped (the shipped policy pack in its policy process, the sealer chaining).
The last line is JSON with the figures of issue 13:

    shipped_eps     events/s of the shipped collector, from the start until every event is acked,
                    chained (sealer) and evaluated (policy process): all of its work done
    shipped_ratio   shipped_eps / bare SQLite executemany of the same rows (target >= 0.50)
    chain_lag_s     seconds from the last ack until the chain is complete (target <= 1)
    policy_lag_s    seconds from the last ack until the policy process has evaluated every event
    acked_eps, acked_ratio      the shipped collector's ack rate alone
    ingest_eps, ingest_ratio    the ingest path without listeners
    baseline_eps    bare SQLite
    collector_cpu_us, sealer_cpu_us, policy_cpu_us      CPU per event of the shipped collector's
                    process (until the last ack), its sealer and its policy process (until done):
                    where the two cores go

A real collector process (`python -m collector.main`) on loopback; the simulated agents run
as asyncio streams in `--workers` separate load-generator processes, so the machine's cores
are shared honestly between load and collector. Each agent sends hello, then batches of
`--batch-size` events with at most `--window` batches unacknowledged (as the agent's
transport does), and is done when the collector acknowledges its last sequence. The clock
runs from the moment every agent has its hello ack until the last ack. The store is then
checked to hold exactly every event once. With `--metrics` the collector also serves its
Prometheus endpoint, scraped once a second during the run, and its events counter must
equal what was sent.

Baseline (same run, same disk): the very rows the store writes (same schema, indexes and
pragmas: WAL, synchronous=FULL, page size and cache; same column values including chain hash
and protobuf bytes), inserted by executemany with one commit per batch, the agents' batches
interleaved as they arrive: what SQLite alone needs for this data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import _cli
from bench.policy import PACK
from collector.store import open_store
from collector.store.rows import event_row
from collector.store.sqlite import INSERT_EVENT, SqliteStore, tune
from protos import chain, events
from protos import exfilguard_pb2 as pb
from tests.helpers import free_port, start_collector, write_collector_config

METHOD = "/exfilguard.v1.Ingest/Stream"
MiB = 1 << 20


def batch_template(agent_id: str, size: int) -> pb.AgentMessage:
    """A batch of realistic events (file reads of a tagged database by cp, ~300 bytes each)."""
    batch = pb.AgentMessage()
    for n in range(size):
        event = events.new_event(
            "file.read",
            file=pb.File(path=f"/srv/db/customers/part-{n:06d}.csv", size=1 << 20, name=f"part-{n:06d}.csv"),
            process=pb.Process(
                pid=4242,
                executable="/usr/bin/cp",
                command_line="cp -r /srv/db /media/usb",
                name="cp",
                parent=pb.ParentProcess(pid=4000),
            ),
            user=pb.User(id="1000", name="alice"),
            tags=["database", "crown-jewels"],
        )
        event.agent.id = agent_id
        event.agent.version = "0.1.0"
        event.host.name = f"ws-{agent_id}"
        event.exfilguard.attribution = "exact"
        batch.batch.events.append(event)
    return batch


def fill(template: pb.AgentMessage, agent_id: str, first: int) -> bytes:
    """The template with sequences first.. and unique event ids, serialized."""
    for offset, event in enumerate(template.batch.events):
        sequence = first + offset
        event.event.sequence = sequence
        event.event.id = f"{agent_id}-{sequence}"
    return template.SerializeToString()


def _identity(data: bytes) -> bytes:
    return data


# ------------------------------------------------------------------ load generator (worker)


async def _agent(address: str, agent_id: str, args: argparse.Namespace, go: asyncio.Event,
                 ready: asyncio.Queue[str]) -> float:
    options = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call: Any = channel.stream_stream(
            METHOD, request_serializer=_identity, response_deserializer=pb.CollectorMessage.FromString
        )()
        hello = pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, version="bench", hostname=f"ws-{agent_id}"))
        await call.write(hello.SerializeToString())
        first_ack = await call.read()
        assert first_ack.ack.sequence == 0, f"{agent_id}: store not empty"
        await ready.put(agent_id)
        template = batch_template(agent_id, args.batch_size)
        last = args.batches * args.batch_size
        acked = 0
        progress = asyncio.Event()

        async def read_acks() -> None:
            nonlocal acked
            while acked < last:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    raise RuntimeError(f"{agent_id}: stream ended at ack {acked}")
                acked = reply.ack.sequence
                progress.set()

        await go.wait()
        reader = asyncio.create_task(read_acks())
        for number in range(args.batches):
            first = number * args.batch_size + 1
            while first - 1 - acked >= args.window * args.batch_size:
                progress.clear()
                await progress.wait()
            await call.write(fill(template, agent_id, first))
        await reader
        done = time.time()
        await call.done_writing()
        return done


async def _worker(args: argparse.Namespace) -> None:
    go = asyncio.Event()
    ready: asyncio.Queue[str] = asyncio.Queue()
    ids = [f"bench-{n:04d}" for n in range(args.first_agent, args.first_agent + args.agents)]
    tasks = [asyncio.create_task(_agent(args.worker, i, args, go, ready)) for i in ids]
    for _ in ids:
        await ready.get()
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    assert line.strip() == "go"
    go.set()
    cpu_before = time.process_time()
    ends = await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu_before
    total = len(ids) * args.batches * args.batch_size
    print(json.dumps({"events": total, "end": max(ends), "cpu": cpu}), flush=True)


# ------------------------------------------------------------------ driver


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first index, count) of each worker's share of `total` agents."""
    out, first = [], 0
    for part in range(parts):
        count = total // parts + (1 if part < total % parts else 0)
        if count:
            out.append((first, count))
        first += count
    return out


# The collector exactly as shipped, except that nothing listens to stored events: measures
# the ingest path (gRPC, validation, store, ack) without the policy engine's per-event work.
_WITHOUT_LISTENERS = [
    sys.executable,
    "-c",
    "import sys, collector.main as m; m.build_listeners = lambda config, store: []; sys.exit(m.main())",
]


class _Scraper(threading.Thread):
    """Scrapes the collector's /metrics once a second, as a (busy) Prometheus would."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.scrapes = 0
        self.done = threading.Event()

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as reply:
            self.scrapes += 1
            text: str = reply.read().decode()
            return text

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.scrape()

    def ingested(self) -> float:
        """exfilguard_events_ingested_total now."""
        for line in self.scrape().splitlines():
            if line.startswith("exfilguard_events_ingested_total "):
                return float(line.split()[1])
        raise RuntimeError("exfilguard_events_ingested_total is not exposed")


@dataclass
class LoadRun:
    """What the load generators reported, and the collector's CPU seconds while they ran."""

    results: list[dict[str, Any]]
    cpu: float
    started: float
    process: psutil.Process
    helpers: dict[str, tuple[psutil.Process, float]]  # sealer, policy: the process, its CPU at the start


_HELPERS = {"sealer": "collector.sealer", "policy": "collector.policy.process"}


def _helpers(process: psutil.Process) -> dict[str, tuple[psutil.Process, float]]:
    """The collector's sealer and policy processes with their CPU seconds now."""
    out = {}
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            for name, module in _HELPERS.items():
                if module in command:
                    out[name] = (child, sum(child.cpu_times()[:2]))
    return out


def helpers_cpu(run: LoadRun, events: int) -> dict[str, float]:
    """CPU microseconds per event each helper process spent since the load started (0: gone)."""
    out = {}
    for name, (child, before) in run.helpers.items():
        try:
            out[name] = (sum(child.cpu_times()[:2]) - before) / events * 1e6
        except psutil.Error:
            out[name] = 0.0
    return out


def run_load(args: argparse.Namespace, address: str, collector_pid: int,
             on_go: Callable[[], None] | None = None, first_agent: int = 0) -> LoadRun:
    """Start the load generator processes, release them together, and wait for them all (agents
    `bench-NNNN` numbered from `first_agent`: another run against the same store takes new ones)."""
    workers: list[subprocess.Popen[str]] = []
    try:
        for first, count in _split(args.agents, args.workers):
            cmd = [
                sys.executable, "-m", "bench.ingest", "--worker", address, "--first-agent",
                str(first_agent + first), "--agents", str(count), "--batches", str(args.batches),
                "--batch-size", str(args.batch_size), "--window", str(args.window),
            ]  # fmt: skip
            workers.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for worker in workers:
            assert worker.stdout is not None
            if (line := worker.stdout.readline().strip()) != "ready":
                raise RuntimeError(f"load generator failed to start: {line!r}")
        process = psutil.Process(collector_pid)
        helpers = _helpers(process)
        cpu_before = sum(process.cpu_times()[:2])
        started = time.time()
        if on_go is not None:
            on_go()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=600)
            if worker.returncode != 0:
                raise RuntimeError(f"load generator exited with {worker.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return LoadRun(results, sum(process.cpu_times()[:2]) - cpu_before, started, process, helpers)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


def measure_collector(args: argparse.Namespace, directory: Path, listeners: bool) -> dict[str, float]:
    """Run the load against a real collector process; events/s and collector CPU per event.

    With `listeners` the collector runs as shipped: the policy pack in its policy process.
    """
    directory.mkdir()
    metrics_port = free_port()
    extra: dict[str, Any] = {"metrics_listen": f"127.0.0.1:{metrics_port}"}
    if listeners:
        extra |= {"policies": [str(PACK)], "policy_rebuild_hours": 0}
    config = write_collector_config(directory, log_level="warning", max_streams=10_000, **extra)
    collector = start_collector(config, command=None if listeners else _WITHOUT_LISTENERS)
    scraper = _Scraper(metrics_port)
    try:
        run = run_load(args, collector.address, collector.pid, scraper.start if args.metrics else None)
        last_ack = max(r["end"] for r in run.results)
        elapsed = last_ack - run.started
        total = sum(r["events"] for r in run.results)
        cpu = run.cpu
        load_cpu = sum(r["cpu"] for r in run.results)
        rss = run.process.memory_info().rss
        location, last = str(directory / "collector.db"), args.batches * args.batch_size
        sealed, evaluated = _wait_followers(location, last, scraper if listeners else None, total)
        evaluated = evaluated or last_ack
        helper_cpu = helpers_cpu(run, total)
        if args.metrics:
            scraper.done.set()
            scraper.join()
            counted = scraper.ingested()
            if counted != total:
                raise RuntimeError(f"metrics count {counted:.0f} events ingested, {total} were sent")
    finally:
        code = collector.stop()
    check_store(code, collector.log, str(directory / "collector.db"), total)
    store = open_store(str(directory / "collector.db"), readonly=True)
    try:
        alerts = len(store.alerts(limit=1_000_000))
    finally:
        store.close()
    done = max(last_ack, sealed, evaluated)
    return {"events": total, "seconds": elapsed, "rate": total / elapsed, "cpu_us": cpu / total * 1e6,
            "rss_mib": rss / MiB, "chain_lag": sealed - last_ack, "policy_lag": evaluated - last_ack,
            "done_rate": total / (done - run.started), "load_cpu_us": load_cpu / total * 1e6,
            "scrapes": scraper.scrapes, "alerts": alerts,
            "sealer_cpu_us": helper_cpu.get("sealer", 0.0), "policy_cpu_us": helper_cpu.get("policy", 0.0)}


def _evaluated(scraper: _Scraper) -> float:
    """exfilguard_policy_events_evaluated_total now (0 before the policy process reported)."""
    for line in scraper.scrape().splitlines():
        if line.startswith("exfilguard_policy_events_evaluated_total "):
            return float(line.split()[1])
    return 0.0


def _wait_followers(location: str, last: int, scraper: _Scraper | None, total: int,
                    timeout: float = 600) -> tuple[float, float]:
    """Wall times when the sealer has chained every agent up to `last` and (with `scraper`) the
    policy process has evaluated `total` events; both watched at once, each time as first seen."""
    store = open_store(location, readonly=True)
    deadline = time.monotonic() + timeout
    sealed: float | None = None
    evaluated: float | None = None if scraper is not None else 0.0  # 0: not watched
    try:
        while time.monotonic() < deadline:
            if sealed is None:
                heads = [store.chain_head(a.id)[0] for a in store.agents()]
                if heads and min(heads) >= last:
                    sealed = time.time()
            if evaluated is None and scraper is not None and _evaluated(scraper) >= total:
                evaluated = time.time()
            if sealed is not None and evaluated is not None:
                return sealed, evaluated
            time.sleep(0.05)
    finally:
        store.close()
    raise RuntimeError(f"not done in {timeout:.0f} s: chain complete at {sealed}, evaluated at {evaluated}")


def check_store(code: int, log: Callable[[], str], location: str, total: int) -> None:
    """The stopped collector exited with 0 and its store holds every one of the `total` events sent."""
    if code != 0:
        raise RuntimeError(f"collector exited with {code}:\n{log()}")
    store = open_store(location, readonly=True)
    try:
        stored = store.count_events()
    finally:
        store.close()
    if stored != total:
        raise RuntimeError(f"store holds {stored} events, {total} were sent")


def wait_sealed(location: str, last: int, timeout: float = 600) -> float:
    """Wall time when the sealer process has chained every agent up to `last` (SQLite path or URL)."""
    store = open_store(location, readonly=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            heads = [store.chain_head(a.id)[0] for a in store.agents()]
            if heads and min(heads) >= last:
                return time.time()
            time.sleep(0.05)
    finally:
        store.close()
    raise RuntimeError("the sealer did not chain every event in time")


def measure_baseline(args: argparse.Namespace, directory: Path, limit: int = 100_000) -> dict[str, float]:
    """Bare executemany of the store's own rows into the store's own schema (WAL, FULL), per batch."""
    agents = max(1, min(args.agents, limit // (args.batches * args.batch_size) or 1))
    per_agent: list[list[list[tuple[Any, ...]]]] = []
    for n in range(agents):
        batches: list[list[tuple[Any, ...]]] = []
        per_agent.append(batches)
        agent_id = f"bench-{n:04d}"
        template = batch_template(agent_id, args.batch_size)
        head = chain.GENESIS
        for number in range(args.batches):
            message = pb.AgentMessage.FromString(fill(template, agent_id, number * args.batch_size + 1))
            rows = []
            for event in message.batch.events:
                head = chain.link(head, events.to_mapping(event))
                row = list(event_row(agent_id, event))
                row[8] = head  # the row as it ends up once sealed
                rows.append(tuple(row))
            batches.append(rows)
    batches = [rows for turn in zip(*per_agent, strict=True) for rows in turn]  # interleaved, as they arrive
    # fsync latency on this kind of disk swings run to run: the median of three runs.
    total = sum(len(b) for b in batches)
    runs = sorted(_insert_rows(directory / f"baseline-{n}.db", batches) for n in range(3))
    return {"events": total, "seconds": runs[1], "rate": total / runs[1]}


def _insert_rows(path: Path, batches: list[list[tuple[Any, ...]]]) -> float:
    """Seconds to insert `batches` into a fresh store-schema database, one commit per batch."""
    SqliteStore(path).close()  # the store creates schema and page size, then steps aside
    db = sqlite3.connect(path, isolation_level=None)
    tune(db)  # the store's own pragmas: WAL, synchronous=FULL, page cache
    started = time.perf_counter()
    for rows in batches:
        db.execute("BEGIN")
        db.executemany(INSERT_EVENT, rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> None:
    """Run the benchmark (or, with --worker, one load-generator process)."""
    parser = _cli.parser("ingest", __doc__)
    _cli.agent_options(parser, 8, "concurrent simulated agents")
    _cli.batch_options(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--metrics", action="store_true", help="serve /metrics, scrape it every second, check its counter"
    )
    args = parser.parse_args()
    if _cli.run_worker(args, _worker):
        return
    directory = _cli.scratch("ingest")
    try:
        print(
            f"ingest: {args.agents} agents x {args.batches} batches x {args.batch_size} events, "
            f"{args.workers} load processes, window {args.window}, {os.cpu_count()} cores, in {directory}",
            flush=True,
        )
        baseline = measure_baseline(args, directory)
        print(f"baseline, bare SQLite executemany, commit per batch: {baseline['rate']:>9,.0f} events/s "
              f"({baseline['events']:,} rows in {baseline['seconds']:.2f} s, median of 3)", flush=True)
        figures: dict[str, float] = {"baseline_eps": round(baseline["rate"])}
        variants = ((False, "ingest path (no listeners)"), (True, "as shipped (pack, policies, sealer)"))
        for listeners, label in variants:
            result = measure_collector(args, directory / ("full" if listeners else "ingest"), listeners)
            ratio = result["rate"] / baseline["rate"]
            print(f"collector, {label}: {result['rate']:>9,.0f} events/s acked = {ratio:.2f} x baseline "
                  f"({result['events']:,} events in {result['seconds']:.2f} s; collector CPU "
                  f"{result['cpu_us']:.1f} us/event, RSS {result['rss_mib']:.0f} MiB; load generators "
                  f"{result['load_cpu_us']:.1f} us/event"
                  + (f"; /metrics scraped {result['scrapes']:.0f} times)" if args.metrics else ")"),
                  flush=True)
            evaluated = (f", policies evaluated {result['policy_lag']:.2f} s after it "
                         f"({result['alerts']:.0f} alerts)")
            print(f"    CPU per event: collector {result['cpu_us']:.1f} us, "
                  f"sealer {result['sealer_cpu_us']:.1f} us"
                  + (f", policy process {result['policy_cpu_us']:.1f} us" if listeners else "")
                  + f", load generators {result['load_cpu_us']:.1f} us", flush=True)
            print(f"    hash chain complete {result['chain_lag']:.2f} s after the last ack"
                  + (evaluated if listeners else "")
                  + f": {result['done_rate']:,.0f} events/s all done = "
                  f"{result['done_rate'] / baseline['rate']:.2f} x baseline", flush=True)
            if listeners:
                figures |= {
                    "shipped_eps": round(result["done_rate"]),
                    "shipped_ratio": round(result["done_rate"] / baseline["rate"], 3),
                    "chain_lag_s": round(result["chain_lag"], 2),
                    "policy_lag_s": round(result["policy_lag"], 2),
                    "acked_eps": round(result["rate"]),
                    "acked_ratio": round(ratio, 3),
                    "alerts": result["alerts"],
                    "collector_cpu_us": round(result["cpu_us"], 1),
                    "sealer_cpu_us": round(result["sealer_cpu_us"], 1),
                    "policy_cpu_us": round(result["policy_cpu_us"], 1),
                }
            else:
                figures |= {"ingest_eps": round(result["rate"]), "ingest_ratio": round(ratio, 3)}
        met = figures["shipped_ratio"] >= 0.5 and figures["chain_lag_s"] <= 1
        print(f"targets (shipped_ratio >= 0.50, chain_lag_s <= 1): {'met' if met else 'NOT met'}")
        print(json.dumps(figures), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
