"""Spool append throughput as a ratio to bare SQLite inserts of the same blobs, in the same run.

    python -m bench.spool [--events N] [--threads T]

Baselines (same pragmas as the spool: WAL, synchronous=FULL, same table):
  - bare batched: executemany of the serialized events in transactions of 2,000 rows,
    no Python work besides the insert (what SQLite alone can do);
  - bare per-row commit: one fsync'd transaction per event (what a naive spool would do).
The spool figure covers the whole path: append() from T threads, sequence assignment,
serialization, group commit, until flush() says everything is durable.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from agent.spool import Spool
from protos import events
from protos import exfilguard_pb2 as pb

_GROUP = 2000


def _sample_events(count: int) -> list[pb.Event]:
    """Events shaped like real file.open events (path, process, user, tags): ~400 bytes each."""
    out = []
    for n in range(count):
        event = events.new_event(
            "file.open",
            file=pb.File(path=f"/srv/db/customers/part-{n:08d}.csv", size=1 << 20, name=f"part-{n:08d}.csv"),
            process=pb.Process(pid=4242, executable="/usr/bin/cp", command_line="cp -r /srv/db /media/usb",
                               name="cp", parent=pb.ParentProcess(pid=4000)),
            user=pb.User(id="1000", name="alice"),
            tags=["database", "crown-jewels"],
        )
        event.host.id = "3d1219c7c4c5404aaa1f6d2a48adfda4"
        event.exfilguard.attribution = "exact"
        out.append(event)
    return out


def _bare_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    return conn


def bare_batched(path: Path, blobs: list[bytes]) -> float:
    """Seconds to insert `blobs` in transactions of _GROUP rows."""
    conn = _bare_db(path)
    start = time.perf_counter()
    for i in range(0, len(blobs), _GROUP):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events(seq, data) VALUES (?, ?)",
                         [(i + j + 1, b) for j, b in enumerate(blobs[i:i + _GROUP])])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def bare_per_row(path: Path, blobs: list[bytes]) -> float:
    """Seconds to insert `blobs` with one committed transaction each."""
    conn = _bare_db(path)
    start = time.perf_counter()
    for i, blob in enumerate(blobs):
        conn.execute("INSERT INTO events(seq, data) VALUES (?, ?)", (i + 1, blob))
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def spool_run(directory: Path, sample: list[pb.Event], threads: int) -> tuple[float, float]:
    """(seconds until all durable, seconds spent inside append() by the slowest thread)."""
    spool = Spool(directory, agent_id="bench", version="0", max_events=10 * len(sample), max_bytes=1 << 40)
    parts = [sample[i::threads] for i in range(threads)]
    append_times = [0.0] * threads

    def produce(k: int) -> None:
        t0 = time.perf_counter()
        for event in parts[k]:
            spool.append(event)
        append_times[k] = time.perf_counter() - t0

    workers = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert spool.flush(600)
    elapsed = time.perf_counter() - start
    assert spool.backlog() == len(sample), "bench: spool lost events"
    spool.close()
    return elapsed, max(append_times)


def main() -> None:
    """Run the benchmark and print figures with their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--per-row", type=int, default=500, help="events for the per-row-commit baseline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="exfilguard-bench-") as tmp:
        base = Path(tmp)
        sample = _sample_events(args.events)
        for seq, event in enumerate(sample, 1):  # same bytes the spool will write
            event.agent.id, event.agent.version, event.event.sequence = "bench", "0", seq
        blobs = [e.SerializeToString() for e in sample]
        size = sum(map(len, blobs)) / len(blobs)

        batched = bare_batched(base / "bare.db", blobs)
        per_row = bare_per_row(base / "per-row.db", blobs[: args.per_row])
        one, one_append = spool_run(base / "spool1", _sample_events(args.events), 1)
        many, many_append = spool_run(base / "spoolN", _sample_events(args.events), args.threads)

    n = args.events
    rate_bare, rate_row = n / batched, args.per_row / per_row
    print(f"spool benchmark: {n} events of ~{size:.0f} bytes, WAL + synchronous=FULL")
    print(f"  baseline bare sqlite, {_GROUP}-row transactions : {rate_bare:10.0f} events/s   (1.00)")
    print(f"  bare sqlite, commit per row                : {rate_row:10.0f} events/s   "
          f"({rate_row / rate_bare:.3f} x baseline)")
    runs = (("1 thread", one, one_append), (f"{args.threads} threads", many, many_append))
    for label, seconds, append_s in runs:
        rate = n / seconds
        print(f"  Spool.append ({label:>9}) until durable    : {rate:10.0f} events/s   "
              f"({rate / rate_bare:.3f} x baseline); append() alone {n / append_s:.0f} calls/s")


if __name__ == "__main__":
    main()
