"""Ingest into PostgreSQL, as ratios to a bare psycopg COPY of the same rows in the same run.

    python -m bench.ingest_postgres [--agents 8] [--batches 50] [--batch-size 500] [--workers 2]
                                    [--window 8] [--no-collector]

Runs against a throwaway PostgreSQL cluster (tests/pg.py) with production durability (fsync
and synchronous_commit on), over TCP on loopback with a password, as a collector would connect.
The rows are bench.ingest's realistic events, the agents' batches interleaved as they arrive.

  baseline   bare psycopg: binary COPY of the very rows ingest writes (same schema and indexes)
             into a fresh database, one transaction per batch; also bare executemany INSERT, for
             reference. Median of three runs each.
  store      PostgresStore.ingest_batches, one batch per transaction (row locks on the agents'
             prefixes, duplicate check, COPY), chaining left to the sealer as the collector does.
  collector  a real collector process with `store: postgresql://…`, driven over real gRPC with
             acks by bench.ingest's load-generator processes; then how long the sealer process
             takes to chain everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import _cli
from bench.ingest import _WITHOUT_LISTENERS, batch_template, check_store, fill, run_load, wait_sealed
from collector.store.postgres import COPY_EVENTS, EVENT_TYPES, PostgresStore, events_row
from protos import exfilguard_pb2 as pb
from tests.helpers import start_collector, write_collector_config
from tests.pg import PgCluster, PgUnavailable, throwaway_cluster

INSERT_EVENT = (
    "INSERT INTO events (agent_id, sequence, event_id, ts, action, host, user_name, device_serial, data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

Batches = list[tuple[str, list[pb.Event]]]


def build(args: argparse.Namespace) -> Batches:
    """Every agent's batches as events, interleaved as they would arrive."""
    per_agent: list[Batches] = []
    for n in range(args.agents):
        agent_id = f"bench-{n:04d}"
        template = batch_template(agent_id, args.batch_size)
        per_agent.append(
            [
                (
                    agent_id,
                    list(
                        pb.AgentMessage.FromString(
                            fill(template, agent_id, b * args.batch_size + 1)
                        ).batch.events
                    ),
                )
                for b in range(args.batches)
            ]
        )
    return [batch for turn in zip(*per_agent, strict=True) for batch in turn]


def event_rows(batches: Batches) -> list[list[tuple[Any, ...]]]:
    """The events-table rows ingest writes, batch by batch."""
    return [[events_row(agent_id, event) for event in batch] for agent_id, batch in batches]


def fresh_database(cluster: PgCluster) -> str:
    """A new database with the store's schema; its URL."""
    url = cluster.url(cluster.create_database("bench"))
    PostgresStore(url).close()  # the store creates its schema, then steps aside
    return url


def _copy(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_EVENTS) as copy:
        copy.set_types(EVENT_TYPES)
        for row in rows:
            copy.write_row(row)


def _executemany(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(INSERT_EVENT, rows)


def bare(cluster: PgCluster, rows: list[list[tuple[Any, ...]]], write: Callable[..., None]) -> float:
    """Seconds for bare psycopg to write `rows`, one transaction per batch (median of three)."""
    runs = []
    for _ in range(3):
        with psycopg.connect(fresh_database(cluster), autocommit=True) as conn:
            started = time.perf_counter()
            for batch in rows:
                write(conn, batch)
            runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def through_store(cluster: PgCluster, batches: Batches) -> tuple[float, float]:
    """(seconds to ingest, seconds to seal afterwards) through PostgresStore (median of three ingests)."""
    runs: list[tuple[float, float]] = []
    for _ in range(3):
        store = PostgresStore(fresh_database(cluster))
        try:
            started = time.perf_counter()
            for agent_id, batch in batches:
                store.ingest_batches([(agent_id, batch)], seal=False)
            ingested = time.perf_counter() - started
            started = time.perf_counter()
            while store.seal(2_000):
                pass
            runs.append((ingested, time.perf_counter() - started))
        finally:
            store.close()
    runs.sort()
    return runs[1]


def through_collector(args: argparse.Namespace, cluster: PgCluster, directory: Path) -> dict[str, float]:
    """A real collector on a PostgreSQL store, loaded over gRPC by bench.ingest's workers."""
    url = fresh_database(cluster)
    config = write_collector_config(directory, log_level="warning", max_streams=10_000, store=url)
    collector = start_collector(config, command=_WITHOUT_LISTENERS)
    try:
        run = run_load(args, collector.address, collector.pid)
        cpu = run.cpu
        elapsed = max(r["end"] for r in run.results) - run.started
        total = sum(r["events"] for r in run.results)
        sealed = wait_sealed(url, args.batches * args.batch_size) - run.started
    finally:
        code = collector.stop()
    check_store(code, collector.log, url, total)
    return {"events": total, "seconds": elapsed, "cpu_us": cpu / total * 1e6, "sealed_seconds": sealed}


def main() -> None:
    """Run the benchmark."""
    parser = _cli.parser("ingest_postgres", __doc__)
    _cli.agent_options(parser, 8, "concurrent simulated agents")  # --workers: for the collector run
    _cli.batch_options(parser)
    parser.add_argument("--no-collector", action="store_true", help="skip the collector-process run")
    args = parser.parse_args()
    total = args.agents * args.batches * args.batch_size
    print(
        f"ingest_postgres: {args.agents} agents x {args.batches} batches x {args.batch_size} events "
        f"= {total:,}, {os.cpu_count()} cores",
        flush=True,
    )
    batches = build(args)
    rows = event_rows(batches)
    try:
        with throwaway_cluster(durable=True) as cluster:
            measure(args, cluster, batches, rows)
    except PgUnavailable as exc:  # raised only while the cluster is set up
        sys.exit(f"ingest_postgres: no PostgreSQL server to measure: {exc}")


def measure(
    args: argparse.Namespace, cluster: PgCluster, batches: Batches, rows: list[list[tuple[Any, ...]]]
) -> None:
    """Print the baseline, then each measurement as a ratio to it."""
    total = sum(len(r) for r in rows)
    copy_s = bare(cluster, rows, _copy)
    many_s = bare(cluster, rows, _executemany)
    print(f"baseline, bare psycopg binary COPY, commit per batch: {total / copy_s:>9,.0f} events/s "
          f"({copy_s:.2f} s, median of 3)", flush=True)  # fmt: skip
    print(f"reference, bare psycopg executemany INSERT, commit per batch: {total / many_s:>9,.0f} "
          f"events/s = {copy_s / many_s:.2f} x baseline", flush=True)  # fmt: skip
    ingest_s, seal_s = through_store(cluster, batches)
    print(f"PostgresStore.ingest_batches, one batch per commit: {total / ingest_s:>9,.0f} events/s "
          f"= {copy_s / ingest_s:.2f} x baseline; sealing afterwards {total / seal_s:,.0f} events/s",
          flush=True)  # fmt: skip
    if args.no_collector:
        return
    directory = Path(tempfile.mkdtemp(prefix="exfilguard-bench-ingest-pg-"))
    try:
        result = through_collector(args, cluster, directory / "collector")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rate = result["events"] / result["seconds"]
    lag = result["sealed_seconds"] - result["seconds"]
    print(f"collector process on PostgreSQL, gRPC with acks (no listeners): {rate:>9,.0f} events/s "
          f"= {rate * copy_s / total:.2f} x baseline (collector CPU {result['cpu_us']:.1f} "
          f"us/event); chained {lag:.2f} s after the last ack", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
