"""What prevention costs: copies to a stick and reads of tagged files with prevent on, off, no agent.

    sudo .venv/bin/python -m bench.prevention [--rounds 5] [--files 2000] [--big-mib 256] [--opens 10000]

Needs root (loop device, mount, udev, fanotify). A real `exfilguard-agent` process (collector
unreachable: it spools) tags a tree of 200 small files; a loop-device stick is mounted before it
starts. Three modes, `--rounds` each, taken in turn within each round (none, monitor, block), so
a change of the machine's load over the run weighs on every mode alike; each round of an agent
mode starts an agent process of its own:
  none     no agent
  monitor  the agent with prevent: monitor (every sensor, nothing refused)
  block    the agent with prevent.removable_writes: block (untagged data: nothing is refused)
an innocent process's 10,000 open+read+close of tagged files (nothing being written to the
stick), then `cp -r` of 2,000 small (4 KiB) files plus one 256 MiB file onto the stick (page
cache; the stick is emptied and synced before each copy, not timed). Before each of the two
the agent is let settle (its CPU time, the responder's included, grows by under 20 ms in 0.3 s,
for at most 20 s; before the copy, the reader's lingering as a carrier, GONE_SECONDS, passed):
what is measured is the steady cost of a copy or a reader, not the agent's
start-up scan nor the hashing of the previous copy, and the tagged trees are disarmed again
after a copy before the reader runs (as the issue asks: nothing being written to a stick). The
reader runs in a session of its own (another program, not the copier's job). Medians over the
rounds. Decision latency is the guard's own (event read -> answer) from its stop line: the
median of the runs' p50, the largest run p99.

The last line is JSON with these keys:
    copy_none_s, copy_monitor_s, copy_block_s   median wall time of the cp -r
    copy_block_ratio        copy_block_s / copy_none_s (target <= 1.3)
    copy_monitor_ratio      copy_monitor_s / copy_none_s
    copy_agent_cpu_monitor_s, copy_agent_cpu_block_s   median CPU time the agent (with its
                            responder) spent during one copy: the load it puts on the machine
    copy_responder_cpu_s    of that in block mode, the responder's (answering the copy's opens)
    copy_waits_block        median voluntary context switches of cp in block mode (each open on
                            the stick waits for an answer: about one per file)
    copy_responder_us_per_wait   median of the responder's CPU per copy over cp's waits in
                            microseconds: what one answer costs it (other programs' opens of the
                            stick meanwhile included; CPU time is counted in clock ticks)
    decision_p50_ms, decision_p99_ms, decisions   permission-event answer latency and count
    decisions_fast          of those, answered by the responder (a clean verdict, agent/prevent/
                            verdicts.py; a read from the stick; an innocent reader while armed)
    armings                 times the tagged trees were armed (a write to the stick began while none was)
    opens_none_s, opens_block_s   median time of the 10,000 tagged opens
    opens_monitor_s         the same with the agent in monitor mode
    opens_block_ratio       opens_block_s / opens_none_s (target <= 1.5)
    opens_monitor_ratio     opens_monitor_s / opens_none_s (what the sensors cost without prevention)
    load_1m                 the machine's load average when the run ended (figures at a load
                            over ~1 say where block stands against monitor, not what a quiet
                            machine gives)
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.prevent.arming import GONE_SECONDS
from bench import _cli

SETTLE_SECONDS = 20.0   # the longest wait for the agent to be idle before a measurement
SETTLE_CPU = 0.02       # idle: less CPU than this (seconds, agent and responder) in 0.3 s
_TICKS = os.sysconf("SC_CLK_TCK")

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
        _wait(lambda: " started: id=" in self.text(), 120, f"the {mode} agent to start")
        if mode == "block":
            _wait(lambda: f"guarding writes to {point}" in self.text(), 30, "the guard on the stick")

    def text(self) -> str:
        """What it logged so far (a path it names need not be UTF-8)."""
        return self.log.read_text(errors="replace")

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: the agent with its child processes (the responder), and those alone."""
        kids = 0.0
        for task in _listdir(f"/proc/{self.proc.pid}/task"):
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{task}/children").read_text().split()
            except OSError:
                continue
            kids += sum(_cpu(int(child)) for child in children)
        return _cpu(self.proc.pid) + kids, kids

    def settle(self) -> None:
        """Until the agent is idle again (start-up scan, hashing a copy), for at most SETTLE_SECONDS."""
        deadline = time.monotonic() + SETTLE_SECONDS
        last = self.cpu()[0]
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.cpu()[0]
            if now - last < SETTLE_CPU:
                return
            last = now

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.text()


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads, ended ones too); 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _listdir(path: str) -> list[str]:
    try:
        return [entry.name for entry in Path(path).iterdir()]
    except OSError:
        return []


def _copy(source: Path, point: Path, agent: Agent | None) -> tuple[float, int, float, float]:
    """One timed `cp -r`: (seconds, cp's voluntary context switches, the agent's CPU seconds for
    it until it settled, of which the responder's)."""
    dest = point / "copy"
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["sync", "-f", str(point)], check=True)
    if agent is not None:
        agent.settle()
    before = agent.cpu() if agent is not None else (0.0, 0.0)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(dest)], check=True)
    took = time.perf_counter() - start
    waits = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - usage
    if agent is None:
        return took, waits, 0.0, 0.0
    agent.settle()
    after = agent.cpu()
    return took, waits, after[0] - before[0], after[1] - before[1]


def _opens(tagged: list[Path], count: int) -> float:
    done = subprocess.run([sys.executable, "-c", OPENER, str(count), *map(str, tagged)],
                          capture_output=True, text=True, check=True, start_new_session=True)
    return float(done.stdout)


def main() -> int:
    """Run the rounds and print the figures."""
    parser = _cli.parser("prevention", __doc__)
    parser.add_argument("--rounds", type=int, default=5)
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
                      # a copy's deleted files may stay held while an agent hashes them (other agents
                      # on the machine too: a run ended in ENOSPC); a sparse image costs what is written
                      size_mib=(3 * args.rounds + 1) * (args.big_mib + args.files * 8 // 1024) + 128)
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
        modes = ("none", "monitor", "block")
        copies: dict[str, list[float]] = {mode: [] for mode in modes}
        opens: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu: dict[str, list[float]] = {mode: [] for mode in modes}
        responder: list[float] = []
        waits: list[int] = []
        per_wait: list[float] = []
        decisions = fast = armings = 0
        p50: list[float] = []
        p99: list[float] = []
        for n in range(args.rounds):
            for mode in modes:
                agent = Agent(top, tagged_dir, mode, point, n) if mode != "none" else None
                try:
                    if agent is not None:
                        agent.settle()
                    # the innocent reader first: block on, nothing being written to the stick
                    opens[mode].append(_opens(tagged, args.opens))
                    if agent is not None:
                        # the reader, a carrier, keeps the sticks armed GONE_SECONDS after it ended
                        # (what it wrote may not be known as derived yet): the copy is another task
                        time.sleep(GONE_SECONDS + 0.5)
                    took, waited, used, answering = _copy(source, point, agent)
                finally:
                    text = agent.stop() if agent is not None else ""  # a failed round leaves no agent behind
                copies[mode].append(took)
                cpu[mode].append(used)
                if mode == "block":
                    responder.append(answering)
                    waits.append(waited)
                    per_wait.append(answering / max(1, waited) * 1e6)
                print(f"round {n} {mode:8s} copy {took:.3f} s (agent CPU {used:.2f} s, cp waited {waited}x)"
                      f"  opens {opens[mode][-1]:.4f} s", flush=True)
                if agent is None:
                    continue
                found = _STOP_LINE.search(text)
                if found:
                    decisions += int(found[1])
                    fast += int(found[2])
                    armings += int(found[5])
                    p50.append(float(found[3]))
                    p99.append(float(found[4]))
                elif mode == "block":
                    print("  no decision figures in the agent's stop line:", text[-2000:])
        med = {mode: statistics.median(values) for mode, values in copies.items()}
        omed = {mode: statistics.median(values) for mode, values in opens.items()}
        figures = {
            "copy_none_s": round(med["none"], 3),
            "copy_monitor_s": round(med["monitor"], 3),
            "copy_block_s": round(med["block"], 3),
            "copy_block_ratio": round(med["block"] / med["none"], 3),
            "copy_monitor_ratio": round(med["monitor"] / med["none"], 3),
            "copy_agent_cpu_monitor_s": round(statistics.median(cpu["monitor"]), 3),
            "copy_agent_cpu_block_s": round(statistics.median(cpu["block"]), 3),
            "copy_responder_cpu_s": round(statistics.median(responder), 3),
            "copy_waits_block": round(statistics.median(waits)),
            "copy_responder_us_per_wait": round(statistics.median(per_wait), 1),
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
            "load_1m": os.getloadavg()[0],
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
