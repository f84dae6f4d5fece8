"""What prevention costs: copies to a stick and reads of tagged files with prevent on, off, no agent.

    sudo .venv/bin/python -m bench.prevention [--rounds 3] [--files 2000] [--big-mib 256] [--opens 10000]

Needs root (loop device, mount, udev, fanotify). A real `exfilguard-agent` process (collector
unreachable: it spools) tags a tree of 200 small files; a loop-device stick is mounted before it
starts. Three modes, one agent process each (starting one takes a while), `--rounds` each:
  none     no agent
  monitor  the agent with prevent: monitor (every sensor, nothing refused)
  block    the agent with prevent.removable_writes: block (untagged data: nothing is refused)
an innocent process's 10,000 open+read+close of tagged files (nothing being written to the
stick), then `cp -r` of 2,000 small (4 KiB) files plus one 256 MiB file onto the stick (page
cache; the stick is emptied and synced before each copy, not timed). The reader runs in a
session of its own (another program, not the copier's job). Medians over the rounds. Decision
latency is the guard's own (event read -> answer) from its stop line: the median of the runs'
p50, the largest run p99.

The last line is JSON with these keys:
    copy_none_s, copy_monitor_s, copy_block_s   median wall time of the cp -r
    copy_block_ratio        copy_block_s / copy_none_s (target <= 1.3)
    copy_monitor_ratio      copy_monitor_s / copy_none_s
    decision_p50_ms, decision_p99_ms, decisions   permission-event answer latency and count
    decisions_fast          of those, answered from a clean verdict (agent/prevent/verdicts.py)
    armings                 times the tagged trees were armed (a write to the stick began while none was)
    opens_none_s, opens_block_s   median time of the 10,000 tagged opens
    opens_monitor_s         the same with the agent in monitor mode
    opens_block_ratio       opens_block_s / opens_none_s (target <= 1.5)
    opens_monitor_ratio     opens_monitor_s / opens_none_s (what the sensors cost without prevention)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _cli

BIN = Path(sys.executable).parent
# the guard's stop line (ContentGuard.summary)
_STOP_LINE = re.compile(r"decisions=(\d+) fast=(\d+) blocked=\d+ p50_ms=([\d.]+) p99_ms=([\d.]+) "
                        r"overflows=\d+ armings=(\d+)")

OPENER = """
import os, sys, time
paths = sys.argv[2:]
n = int(sys.argv[1])
start = time.perf_counter()
for i in range(n):
    fd = os.open(paths[i % len(paths)], os.O_RDONLY)
    os.read(fd, 4096)
    os.close(fd)
print(time.perf_counter() - start)
"""


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.prevention: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Agent:
    """One `exfilguard-agent` process for one mode; stopped with SIGTERM."""

    def __init__(self, work: Path, tagged: Path, mode: str, point: Path, n: int) -> None:
        self.log = work / f"agent-{mode}-{n}.log"
        config = work / f"agent-{mode}-{n}.yaml"
        prevent = "{removable_writes: block}" if mode == "block" else "{removable_writes: monitor}"
        config.write_text(f"collector: 127.0.0.1:9\nstate_dir: {work / f'state-{mode}-{n}'}\n"
                          f"tags:\n  {tagged}: [database]\nprevent: {prevent}\n")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(BIN / "exfilguard-agent"), "--config", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        _wait(lambda: " started: id=" in self.log.read_text(), 120, f"the {mode} agent to start")
        if mode == "block":
            _wait(lambda: f"guarding writes to {point}" in self.log.read_text(), 30, "the guard on the stick")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        text = self.log.read_text()
        dbg = [l for l in text.splitlines() if "DBG" in l and "plain\\x00/media" not in l]
        print(len(dbg), "DBG lines")
        for l in dbg[:3] + dbg[-3:]: print(l[:700])
        return text


def _copy(source: Path, point: Path) -> float:
    dest = point / "copy"
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["sync", "-f", str(point)], check=True)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(dest)], check=True)
    return time.perf_counter() - start


def _opens(tagged: list[Path], count: int) -> float:
    done = subprocess.run([sys.executable, "-c", OPENER, str(count), *map(str, tagged)],
                          capture_output=True, text=True, check=True, start_new_session=True)
    return float(done.stdout)


def main() -> int:
    """Run the rounds and print the figures."""
    parser = _cli.parser("prevention", __doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--opens", type=int, default=10_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.prevention: skipped, needs root (loop devices, mount, udev, fanotify)")
        return 0
    from lab.loopstick import LoopStick, ensure_udevd

    # on tmpfs: disk writeback of other work on the machine would swamp what is measured
    top = Path(tempfile.mkdtemp(prefix="eg-prevention-", dir="/dev/shm"))
    # a label (and so a mount point) of its own: two runs at once would write to each other's stick
    stick = LoopStick(top / "stick", label=f"EGPR{os.getpid() % 100_000}", serial=f"EG-PREVENT-{os.getpid()}",
                      # a copy's deleted files may stay held (the agent hashing them) until the next copy
                      size_mib=(args.rounds + 1) * (args.big_mib + args.files * 8 // 1024) + 128)
    try:
        tagged_dir = top / "srv-db"
        tagged_dir.mkdir()
        tagged = []
        for i in range(200):
            path = tagged_dir / f"rec{i:03d}.csv"
            path.write_bytes(os.urandom(4096))
            tagged.append(path)
        source = top / "plain"
        for i in range(args.files):
            sub = source / f"d{i // 200:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
        with (source / "big.bin").open("wb") as fh:
            for _ in range(args.big_mib):
                fh.write(os.urandom(1 << 20))
        ensure_udevd()
        stick.create()
        stick.plug()
        point = stick.mount()
        copies: dict[str, list[float]] = {"none": [], "monitor": [], "block": []}
        opens: dict[str, list[float]] = {"none": [], "monitor": [], "block": []}
        decisions = fast = armings = 0
        p50: list[float] = []
        p99: list[float] = []
        for mode in ("none", "block"):
            agent = Agent(top, tagged_dir, mode, point, 0) if mode != "none" else None
            try:
                for n in range(args.rounds):
                    # the innocent reader first: block on, nothing being written to the stick
                    opens[mode].append(_opens(tagged, args.opens))
                    copies[mode].append(_copy(source, point))
                    print(f"round {n} {mode:8s} copy {copies[mode][-1]:.2f} s  opens {opens[mode][-1]:.3f} s",
                          flush=True)
            finally:
                text = agent.stop() if agent is not None else ""  # a failed round leaves no agent behind
            if agent is not None:
                found = _STOP_LINE.search(text)
                if found:
                    decisions += int(found[1])
                    fast += int(found[2])
                    armings += int(found[5])
                    p50.append(float(found[3]))
                    p99.append(float(found[4]))
                elif mode == "block":
                    print("  no decision figures in the agent's stop line:", text[-2000:])
        return 0
        omed = {mode: statistics.median(values) for mode, values in opens.items()}
        figures = {
            "copy_none_s": round(med["none"], 3),
            "copy_monitor_s": round(med["monitor"], 3),
            "copy_block_s": round(med["block"], 3),
            "copy_block_ratio": round(med["block"] / med["none"], 3),
            "copy_monitor_ratio": round(med["monitor"] / med["none"], 3),
            "decision_p50_ms": round(statistics.median(p50), 3) if p50 else None,
            "decision_p99_ms": round(max(p99), 3) if p99 else None,
            "decisions": decisions,
            "decisions_fast": fast,
            "armings": armings,
            "opens_none_s": round(omed["none"], 4),
            "opens_block_s": round(omed["block"], 4),
            "opens_monitor_s": round(omed["monitor"], 4),
            "opens_block_ratio": round(omed["block"] / omed["none"], 3),
            "opens_monitor_ratio": round(omed["monitor"] / omed["none"], 3),
        }
        print(json.dumps(figures))
        return 0
    finally:
        try:
            stick.remove()
        finally:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
