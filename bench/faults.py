"""The spool on a full disk, at length: what it costs, whether every event is accounted for, how
fast it recovers. Needs root (it mounts small tmpfs file systems).

    python -m bench.faults [--events N] [--disk-mib M]

Baseline, same run: the same events appended to a spool on a disk with room to spare (events
per second until durable). Then the same events into a spool on an M MiB disk that fills
after a part of them: its rate as a ratio to the baseline, the share refused, whether stored +
counted lost equals produced (it must, exactly), how long it takes after the collector's ack of
everything until the agent.gap is stored and the spool takes events again, and whether 1,000
events appended after that are all stored.

Final JSON line keys: full_disk_append_ratio, lost_share, accounted_exactly, recovery_seconds,
after_recovery_stored_share, events, disk_mib.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agent.gaps import REASON_DISK_FULL
from agent.spool import Spool
from bench.spool import _sample_events


@contextlib.contextmanager
def _disk(base: Path, name: str, mib: int) -> Iterator[Path]:
    path = base / name
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _spool(directory: Path, events: int) -> Spool:
    return Spool(directory, agent_id="bench", version="0", max_events=10 * events, max_bytes=1 << 40)


def _fill(spool: Spool, events: int) -> float:
    """Seconds to append the sample and have every event stored or counted."""
    start = time.perf_counter()
    for event in _sample_events(events):
        spool.append(event)
    assert spool.flush(600), "bench: the spool did not keep up"
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark; print figures with their ratios and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--disk-mib", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.faults: needs root to mount the small file systems")
    n = args.events
    logging.disable(logging.WARNING)  # the spool says "disk full" once per episode; the figures say more
    with tempfile.TemporaryDirectory(prefix="exfilguard-bench-") as tmp:
        base = Path(tmp)
        with _disk(base, "roomy", 64 * args.disk_mib) as roomy:
            spool = _spool(roomy, n)
            baseline = _fill(spool, n)
            spool.close()
        with _disk(base, "small", args.disk_mib) as small:
            spool = _spool(small, n)
            full = _fill(spool, n)
            stored, lost = spool.backlog(), spool.pending_losses().get(REASON_DISK_FULL, 0)
            accounted = stored + lost == n
            start = time.perf_counter()
            spool.ack(spool.next_sequence - 1)  # the collector took everything stored
            deadline = start + 120
            while spool.pending_losses() and time.perf_counter() < deadline:
                time.sleep(0.01)
            recovery = time.perf_counter() - start
            before = spool.next_sequence
            _fill(spool, 1_000)
            after_share = (spool.next_sequence - before) / 1_000  # the agent.gap was stored before
            spool.close()
    rate_base, rate_full = n / baseline, n / full
    print(f"spool on a full disk: {n} events, {args.disk_mib} MiB disk")
    print(f"  baseline, roomy disk          : {rate_base:10.0f} events/s   (1.00)")
    print(f"  small disk, filling then full : {rate_full:10.0f} events/s   "
          f"({rate_full / rate_base:.3f} x baseline)")
    print(f"  stored {stored}, counted lost {lost} ({lost / n:.3f}); accounted exactly: {accounted}")
    print(f"  ack of everything -> agent.gap stored, taking events again: {recovery:.3f} s")
    print(f"  events appended after recovery and stored: {after_share:.3f}")
    print(json.dumps({
        "full_disk_append_ratio": round(rate_full / rate_base, 3),
        "lost_share": round(lost / n, 3),
        "accounted_exactly": accounted,
        "recovery_seconds": round(recovery, 3),
        "after_recovery_stored_share": round(after_share, 3),
        "events": n,
        "disk_mib": args.disk_mib,
    }))


if __name__ == "__main__":
    main()
