"""Sensor capture completeness and overhead, against inotifywait, fatrace and auditd in the same run.

    python -m bench.sensors [--small N] [--big-mib M] [--idle S] [--index-files F] [--full]

Runs the sensors (build_sensors, fanotify when root) in a child process whose emit writes
each event length-prefixed to a file, as a spool would. Figures:
  - capture: copy N small files and one big file from a tagged tree onto a loop-device USB
    stick with `cp -r`; the share of files on the stick reported by `file.write` (or covered
    by an `agent.gap`), and the share identified by `file.copy`;
  - CPU on one create/write/read workload on a tagged tree (on a tmpfs of its own), watched
    at once by the sensors and by `inotifywait -m -r`, `fatrace -c` and auditd with a watch
    rule (bench/_watchers.py): each one's CPU seconds and events, ours as a ratio to each
    (target <= 4 vs inotifywait); and the same net of each process's background CPU measured
    just before (the agent's file-system-wide marks also see the rest of a busy machine);
  - idle CPU of the sensors over S seconds (target < 0.5% of a core);
  - RSS with F tagged files indexed (target < 60 MiB), as the sensors are ready and once the
    content catalog has fingerprinted them all (its reads after start).
--full: 10,000 small files, a 1 GiB file, 60 s idle, 100,000 indexed files.
Needs root (loop devices, fanotify, mount, audit) and udev; inotify-tools, fatrace and auditd
(scripts/bootstrap installs them; a missing one is left out and said so).
The last line is JSON: cpu_ratio_inotifywait, cpu_ratio_fatrace, cpu_ratio_auditd (and each
`_net` of background), idle_cpu_pct, rss_mib, rss_fingerprinted_mib, write_pct, copy_pct,
sensors_events.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench._watchers import WATCHERS, Watcher, settle, tmpfs, untmpfs
from protos import exfilguard_pb2 as pb
from protos.events import to_mapping

_LEN = struct.Struct("<I")


# ------------------------------------------------------------------ child: the sensors


def _serve(config_json: str, out_path: str) -> None:
    """Child process: run the sensors until a line arrives on stdin."""
    from agent.content import ContentCatalog
    from agent.sensors.wiring import build_sensors, hold_started
    from common.agentconfig import AgentConfig

    config = AgentConfig.model_validate(json.loads(config_json))
    lock = threading.Lock()
    with Path(out_path).open("ab", buffering=1 << 16) as out:

        def emit(event: pb.Event) -> None:
            blob = event.SerializeToString()
            with lock:
                out.write(_LEN.pack(len(blob)) + blob)

        sensors = build_sensors(config, emit)
        for sensor in sensors:
            sensor.start()
        hold_started()  # as the agent's main does
        print("ready " + ",".join(s.name for s in sensors), flush=True)
        # which thread is which, for the CPU per thread (Python does not name the OS threads)
        print(json.dumps({t.native_id: t.name for t in threading.enumerate()}), flush=True)
        while sys.stdin.readline().strip() == "fingerprinted":
            catalogs = [s for s in sensors if isinstance(s, ContentCatalog)]
            print(f"fingerprinted {all(c.wait_ready(300) for c in catalogs)}", flush=True)
        for sensor in reversed(sensors):
            sensor.stop()
        with lock:
            out.flush()
    print("stopped", flush=True)


def _read_events(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    out, offset = [], 0
    while offset + 4 <= len(data):
        (size,) = _LEN.unpack_from(data, offset)
        if offset + 4 + size > len(data):
            break
        out.append(to_mapping(pb.Event.FromString(data[offset + 4 : offset + 4 + size])))
        offset += 4 + size
    return out


class Agent:
    """The sensors in a child process, with CPU and RSS readings."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.out = workdir / f"events-{time.monotonic_ns()}.bin"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sensors", "--serve", json.dumps(config), str(self.out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"sensor process failed to start: {line!r}")
        self.sensors = line.split()[1] if len(line.split()) > 1 else ""
        self.threads: dict[int, str] = {int(k): v for k, v in json.loads(self.proc.stdout.readline()).items()}
        self.ps = psutil.Process(self.proc.pid)

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far per sensor thread, by name (threads started later: `other`), and
        of all of them in the kernel (`(system)`)."""
        out: dict[str, float] = {"(system)": 0.0}
        for thread in self.ps.threads():
            name = self.threads.get(thread.id, "other")
            out[name] = out.get(name, 0.0) + thread.user_time + thread.system_time
            out["(system)"] += thread.system_time
        return out

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        """Resident set size in bytes."""
        return int(self.ps.memory_info().rss)

    def size(self) -> int:
        """Bytes of events written so far."""
        return self.out.stat().st_size if self.out.exists() else 0

    def busy(self) -> tuple[int, int]:
        """Changes while the sensors work: events written, and CPU in 50 ms steps (hashing
        a big file writes nothing for seconds)."""
        return self.size(), int(self.cpu() * 20)

    def fingerprinted(self) -> bool:
        """Wait until the content catalog has fingerprinted every tagged file; False on timeout."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("fingerprinted\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split() == ["fingerprinted", "True"]

    def stop(self) -> list[dict[str, Any]]:
        """Stop the sensors and return every event they emitted."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()
        self.proc.wait(timeout=60)
        return _read_events(self.out)


# ------------------------------------------------------------------ figures


def _make_tree(root: Path, count: int, size: int = 4096) -> None:
    root.mkdir(parents=True, exist_ok=True)
    per_dir = 1000
    payload = os.urandom(size)
    for i in range(count):
        sub = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            sub.mkdir(exist_ok=True)
        # distinct content per file: a counter in front of shared random bytes
        (sub / f"r{i:07d}.csv").write_bytes(i.to_bytes(8, "little") + payload[8:])


def capture(work: Path, small: int, big_mib: int) -> dict[str, Any]:
    """Copy a tagged tree with many small files and one big file onto a loop stick."""
    from lab.loopstick import LoopStick, ensure_udevd

    ensure_udevd()
    tree = work / "capture" / "db"
    _make_tree(tree / "small", small)
    big = tree / "big.bin"
    with big.open("wb") as fh:
        chunk = os.urandom(1 << 20)
        for _ in range(big_mib):
            fh.write(chunk)
    need = (small * 8192 + (big_mib << 20)) * 1.3 / (1 << 20) + 64
    stick = LoopStick(work / "stick", label="EGBENCH", serial=f"EGBENCH{os.getpid()}", size_mib=int(need))
    stick.create()
    try:
        stick.plug()
        point = stick.mount()
        agent = Agent(work, {"tags": {str(tree): ["database"]}})
        try:
            # wait for the mount to be seen (the mark is placed before device.mount is emitted)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and b"device.mount" not in agent.out.read_bytes():
                time.sleep(0.05)
            cpu0, start = agent.cpu(), time.monotonic()
            subprocess.run(["cp", "-r", str(tree), str(point)], check=True)
            copy_seconds = time.monotonic() - start
            settle(agent.busy, quiet=2.0, limit=300.0, poll=0.1)
            cpu = agent.cpu() - cpu0
        finally:
            events = agent.stop()
        on_stick = {str(p) for p in Path(point).rglob("*") if p.is_file()}
        writes = {e["file.path"] for e in events if e["event.action"] == "file.write"}
        copies = {e["file.path"] for e in events if e["event.action"] == "file.copy"}
        gaps = [e for e in events if e["event.action"] == "agent.gap"]
        return {
            "files": len(on_stick), "writes": len(on_stick & writes), "copies": len(on_stick & copies),
            "gaps": len(gaps), "copy_seconds": copy_seconds, "agent_cpu": cpu,
            "attribution": Counter(e.get("exfilguard.attribution", "") for e in events
                                   if e["event.action"] == "file.write" and e["file.path"] in on_stick),
        }
    finally:
        stick.remove()


def overhead(work: Path, files: int, quiet: float) -> dict[str, Any]:
    """CPU on one create/write/read workload on a tagged tree, watched at once by the sensors
    and by each C watcher (bench/_watchers.py); and each one's background CPU over `quiet`
    seconds before it (the agent's system-wide marks see the rest of the machine too)."""
    point = work / "overhead"
    tmpfs(point, files * 12 // 1024 + 64)
    try:
        tree = point / "tagged"
        tree.mkdir()
        agent = Agent(work, {"tags": {str(tree): ["bench"]}})
        watchers = [cls(tree, work) for cls in WATCHERS if not cls.missing()]
        started: list[Watcher] = []
        try:
            for watcher in watchers:
                watcher.start()
                started.append(watcher)
            time.sleep(1.0)  # the agent's start-up (index, marks) is not background
            procs: dict[str, Any] = {"sensors": agent, **{w.name: w for w in started}}
            cpu0, t0 = {n: p.cpu() for n, p in procs.items()}, time.monotonic()
            time.sleep(quiet)
            cpu1, t1 = {n: p.cpu() for n, p in procs.items()}, time.monotonic()
            threads1 = agent.thread_cpu()
            background = {n: (cpu1[n] - cpu0[n]) / (t1 - t0) for n in procs}
            subprocess.run([sys.executable, "-c", _WORKLOAD, str(tree), str(files)], check=True)
            settle(agent.busy, quiet=2.0, limit=300.0, poll=0.1)
            for watcher in started:
                settle(watcher.size, quiet=1.0, limit=300.0, poll=0.1)
            cpu2, t2 = {n: p.cpu() for n, p in procs.items()}, time.monotonic()
            threads = {n: c - threads1.get(n, 0.0) for n, c in agent.thread_cpu().items()}
        finally:
            for watcher in reversed(started):
                watcher.stop()
        events = agent.stop()
    finally:
        untmpfs(point)
    window = t2 - t1
    figures = {n: {"cpu": cpu2[n] - cpu1[n], "background": background[n],
                   "net": max(cpu2[n] - cpu1[n] - background[n] * window, 1e-6)} for n in procs}
    figures["sensors"]["events"] = sum(1 for e in events if str(e.get("event.action", "")).startswith("file"))
    for watcher in started:
        figures[watcher.name]["events"] = watcher.events()
    missing = [cls.missing() for cls in WATCHERS if cls.missing()]
    return {"tools": figures, "window": window, "sensors": agent.sensors, "missing": missing,
            "threads": threads, "gaps": sum(1 for e in events if e["event.action"] == "agent.gap")}


_WORKLOAD = (
    "import os,sys\nroot=sys.argv[1]\nn=int(sys.argv[2])\ndata=b'x'*1024\n"
    "for i in range(n):\n"
    "    d=os.path.join(root,'d%03d'%(i//1000))\n"
    "    os.makedirs(d,exist_ok=True)\n"
    "    p=os.path.join(d,'f%06d'%i)\n"
    "    with open(p,'wb') as f: f.write(data)\n"
    "for i in range(n):\n"
    "    with open(os.path.join(root,'d%03d'%(i//1000),'f%06d'%i),'rb') as f: f.read()\n"
)


def idle(work: Path, seconds: float) -> dict[str, Any]:
    """CPU share of a core used by idle sensors (a tagged tree, nothing happening in it)."""
    tree = work / "idle" / "tagged"
    _make_tree(tree, 1000)
    agent = Agent(work, {"tags": {str(tree): ["bench"]}})
    time.sleep(2.0)  # start-up work (index, marks) is not idle time
    cpu0, t0, threads0 = agent.cpu(), time.monotonic(), agent.thread_cpu()
    time.sleep(seconds)
    cpu, wall = agent.cpu() - cpu0, time.monotonic() - t0
    threads = {n: c - threads0.get(n, 0.0) for n, c in agent.thread_cpu().items()}
    agent.stop()
    return {"cpu": cpu, "wall": wall, "threads": threads}


def memory(work: Path, count: int) -> dict[str, Any]:
    """RSS of the sensors with `count` tagged files indexed, and of a bare Python as baseline."""
    tree = work / "memory" / "tagged"
    _make_tree(tree, count, size=64)
    start = time.monotonic()
    agent = Agent(work, {"tags": {str(tree): ["bench"]}})
    ready = time.monotonic() - start
    rss = agent.rss()
    # what the agent holds once its start-up reads are done: the content catalog fingerprints
    # every tagged file after the sensors are ready, in the background
    if not agent.fingerprinted():
        print("  the content catalog did not finish fingerprinting within 300 s", file=sys.stderr)
    settled, settled_at = agent.rss(), time.monotonic() - start
    agent.stop()
    bare = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    time.sleep(0.5)
    bare_rss = psutil.Process(bare.pid).memory_info().rss
    bare.communicate(b"")
    return {"rss": rss, "bare_rss": bare_rss, "start_seconds": ready, "settled_rss": settled,
            "settled_seconds": settled_at}


# ------------------------------------------------------------------ main


def main() -> int:
    """Run the figures and print them with the commands that produced them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG_JSON", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--small", type=int, default=2000, help="small files copied to the stick")
    parser.add_argument("--big-mib", type=int, default=64, help="size of the big file copied, MiB")
    parser.add_argument("--events-files", type=int, default=2000, help="files in the CPU workload")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument("--quiet", type=float, default=3.0,
                        help="seconds of background CPU measured before the workload")
    parser.add_argument("--index-files", type=int, default=20_000, help="tagged files for the RSS figure")
    parser.add_argument("--only", default="capture,overhead,idle,memory",
                        help="comma-separated figures to run (default: all)")
    parser.add_argument("--full", action="store_true", help="10,000 files, 1 GiB, 60 s idle, 100,000 indexed")
    args = parser.parse_args()
    if args.serve:
        _serve(*args.serve)
        return 0
    if os.geteuid() != 0:
        print("bench.sensors needs root (loop devices, fanotify)", file=sys.stderr)
        return 2
    if args.full:
        args.small, args.big_mib, args.idle, args.index_files = 10_000, 1024, 60.0, 100_000
        args.events_files = 10_000
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp:
        work = Path(tmp)
        only = set(args.only.split(","))
        if "capture" in only:
            cap = capture(work, args.small, args.big_mib)
            _print_capture(args, cap)
            figures["write_pct"] = round(100.0 * cap["writes"] / max(cap["files"], 1), 2)
            figures["copy_pct"] = round(100.0 * cap["copies"] / max(cap["files"], 1), 2)
        if "overhead" in only:
            figures.update(_print_overhead(args, overhead(work, args.events_files, args.quiet)))
        if "idle" in only:
            idl = idle(work, args.idle)
            figures["idle_cpu_pct"] = round(100.0 * idl["cpu"] / idl["wall"], 3)
            print(f"idle: {figures['idle_cpu_pct']:.3f}% of a core over {idl['wall']:.0f} s (target < 0.5%)")
            _print_threads(idl["threads"])
        if "memory" in only:
            mem = memory(work, args.index_files)
            figures["rss_mib"] = round(mem["rss"] / (1 << 20), 1)
            print(f"memory: RSS {figures['rss_mib']:.1f} MiB with {args.index_files} tagged files "
                  f"indexed (target < 60 MiB; bare python {mem['bare_rss'] / (1 << 20):.1f} MiB, "
                  f"{mem['rss'] / mem['bare_rss']:.1f}x); ready in {mem['start_seconds']:.1f} s")
            figures["rss_fingerprinted_mib"] = round(mem["settled_rss"] / (1 << 20), 1)
            print(f"  RSS {figures['rss_fingerprinted_mib']:.1f} MiB once every tagged file is fingerprinted "
                  f"(the content catalog's start-up reads, done {mem['settled_seconds']:.0f} s after start)")
    print(json.dumps(figures, sort_keys=True))
    return 0


def _print_capture(args: argparse.Namespace, cap: dict[str, Any]) -> None:
    files = max(cap["files"], 1)
    covered = cap["writes"] + (cap["files"] - cap["writes"] if cap["gaps"] else 0)
    print(f"capture: cp -r of {args.small} small files + one {args.big_mib} MiB file onto a loop stick")
    print(f"  files on stick {cap['files']}, reported by file.write {cap['writes']} "
          f"({100.0 * cap['writes'] / files:.2f}%), reported or covered by a gap "
          f"{100.0 * covered / files:.2f}% (gaps: {cap['gaps']})")
    print(f"  identified as copies (file.copy) {cap['copies']} ({100.0 * cap['copies'] / files:.2f}%)")
    print(f"  attribution of file.write: {dict(cap['attribution'])}; "
          f"cp took {cap['copy_seconds']:.1f} s, sensors used {cap['agent_cpu']:.1f} CPU s")


def _print_overhead(args: argparse.Namespace, ov: dict[str, Any]) -> dict[str, Any]:
    tools = ov["tools"]
    ours = tools["sensors"]
    others = ", ".join(n for n in tools if n != "sensors")
    print(f"overhead: {args.events_files} files created, written, read in a tagged tree on a tmpfs, "
          f"watched at once by the sensors ({ov['sensors']}) and by {others}")
    print(f"  {'':12} {'events':>7} {'CPU s':>7} {'CPU s/10k ev':>13} {'background':>11} {'ours/theirs':>12} "
          f"{'net of background':>18}")
    out: dict[str, Any] = {}
    for name, tool in tools.items():
        per_10k = tool["cpu"] / max(tool["events"], 1) * 10_000
        ratio = ours["cpu"] / tool["cpu"] if tool["cpu"] else float("inf")
        net = ours["net"] / tool["net"]
        print(f"  {name:12} {tool['events']:7d} {tool['cpu']:7.2f} {per_10k:13.3f} "
              f"{100 * tool['background']:10.2f}% {ratio:11.1f}x {net:17.1f}x")
        if name != "sensors":
            out[f"cpu_ratio_{name}"] = round(ratio, 2)
            out[f"cpu_ratio_{name}_net"] = round(net, 2)
    print(f"  ours/theirs: the sensors' CPU over the tool's on the same workload (target <= 4 vs "
          f"inotifywait); background: CPU share of a core over {args.quiet:g} s before it, the net "
          f"ratio takes it out ({ov['window']:.1f} s window); gaps {ov['gaps']}")
    _print_threads(ov["threads"])
    for tool in ov["missing"]:
        print(f"  not compared: {tool} is not installed (scripts/bootstrap installs it as root)")
    out["sensors_events"] = ours["events"]
    return out


def _print_threads(threads: dict[str, float]) -> None:
    """The sensors' CPU by thread, busiest first, and how much of it was in the kernel."""
    system = threads.pop("(system)", 0.0)
    busiest = sorted(threads.items(), key=lambda item: -item[1])[:6]
    print("  sensors' CPU by thread: " + ", ".join(f"{name} {cpu:.2f} s" for name, cpu in busiest if cpu > 0)
          + f"; {system:.2f} s of it in the kernel")


if __name__ == "__main__":
    sys.exit(main())
