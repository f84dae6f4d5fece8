"""Sensor capture completeness and overhead, against inotifywait in the same run.

    python -m bench.sensors [--small N] [--big-mib M] [--idle S] [--index-files F] [--full]

Runs the sensors (build_sensors, fanotify when root) in a child process whose emit writes
each event length-prefixed to a file, as a spool would. Figures:
  - capture: copy N small files and one big file from a tagged tree onto a loop-device USB
    stick with `cp -r`; the share of files on the stick reported by `file.write` (or covered
    by an `agent.gap`), and the share identified by `file.copy`;
  - CPU per 10,000 file events: the same create/write/read workload on a tagged tree,
    watched at once by the sensors and by `inotifywait -m -r` (inotify-tools); CPU seconds of
    each process per 10,000 events it reported, and ours as a ratio to inotifywait's;
  - idle CPU of the sensors over S seconds (target < 1% of a core);
  - RSS with F tagged files indexed (target < 80 MiB).
--full: 10,000 small files, a 1 GiB file, 60 s idle, 100,000 indexed files.
Needs root (loop devices, fanotify) and udev, rsync-free: cp, inotifywait.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import psutil

from protos import exfilguard_pb2 as pb
from protos.events import to_mapping

_LEN = struct.Struct("<I")


# ------------------------------------------------------------------ child: the sensors


def _serve(config_json: str, out_path: str) -> None:
    """Child process: run the sensors until a line arrives on stdin."""
    from agent.sensors.wiring import build_sensors
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
        print("ready " + ",".join(s.name for s in sensors), flush=True)
        sys.stdin.readline()
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
        self.ps = psutil.Process(self.proc.pid)

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

    def stop(self) -> list[dict[str, Any]]:
        """Stop the sensors and return every event they emitted."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()
        self.proc.wait(timeout=60)
        return _read_events(self.out)


def _settle(measure: Any, quiet: float = 1.0, limit: float = 300.0) -> None:
    """Wait until `measure()` stops growing for `quiet` seconds (bounded by `limit`)."""
    deadline = time.monotonic() + limit
    last, since = measure(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = measure()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


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
            _settle(agent.busy, quiet=2.0)
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


def overhead(work: Path, files: int) -> dict[str, Any]:
    """CPU per 10,000 events: sensors vs inotifywait on one create/write/read workload."""
    tree = work / "overhead" / "tagged"
    tree.mkdir(parents=True)
    agent = Agent(work, {"tags": {str(tree): ["bench"]}})
    log = work / "inotifywait.log"
    with log.open("wb") as sink:
        waiter = subprocess.Popen(["inotifywait", "-m", "-r", "-q", str(tree)], stdout=sink,
                                  stderr=subprocess.PIPE)
        assert waiter.stderr is not None
        _wait_inotifywait(waiter.stderr)
        iw = psutil.Process(waiter.pid)
        iw_cpu0, ag_cpu0 = _cpu(iw), agent.cpu()
        script = (
            "import os,sys\nroot=sys.argv[1]\nn=int(sys.argv[2])\ndata=b'x'*1024\n"
            "for i in range(n):\n"
            "    d=os.path.join(root,'d%03d'%(i//1000))\n"
            "    os.makedirs(d,exist_ok=True)\n"
            "    p=os.path.join(d,'f%06d'%i)\n"
            "    with open(p,'wb') as f: f.write(data)\n"
            "for i in range(n):\n"
            "    with open(os.path.join(root,'d%03d'%(i//1000),'f%06d'%i),'rb') as f: f.read()\n"
        )
        subprocess.run([sys.executable, "-c", script, str(tree), str(files)], check=True)
        _settle(agent.busy, quiet=2.0)
        _settle(lambda: log.stat().st_size, quiet=1.0)
        iw_cpu, ag_cpu = _cpu(iw) - iw_cpu0, agent.cpu() - ag_cpu0
        waiter.terminate()
        waiter.wait(timeout=10)
    events = agent.stop()
    ours = sum(1 for e in events if str(e.get("event.action", "")).startswith("file."))
    theirs = sum(1 for _ in log.open("rb"))
    return {"ours_events": ours, "ours_cpu": ag_cpu, "iw_events": theirs, "iw_cpu": iw_cpu,
            "sensors": agent.sensors, "gaps": sum(1 for e in events if e["event.action"] == "agent.gap")}


def _wait_inotifywait(stderr: IO[bytes]) -> None:
    # without -q inotifywait says "Watches established."; with -q it is silent: give it a moment
    del stderr
    time.sleep(1.0)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def idle(work: Path, seconds: float) -> dict[str, Any]:
    """CPU share of a core used by idle sensors (a tagged tree, nothing happening in it)."""
    tree = work / "idle" / "tagged"
    _make_tree(tree, 1000)
    agent = Agent(work, {"tags": {str(tree): ["bench"]}})
    time.sleep(2.0)  # start-up work (index, marks) is not idle time
    cpu0, t0 = agent.cpu(), time.monotonic()
    time.sleep(seconds)
    cpu, wall = agent.cpu() - cpu0, time.monotonic() - t0
    agent.stop()
    return {"cpu": cpu, "wall": wall}


def memory(work: Path, count: int) -> dict[str, Any]:
    """RSS of the sensors with `count` tagged files indexed, and of a bare Python as baseline."""
    tree = work / "memory" / "tagged"
    _make_tree(tree, count, size=64)
    start = time.monotonic()
    agent = Agent(work, {"tags": {str(tree): ["bench"]}})
    ready = time.monotonic() - start
    rss = agent.rss()
    agent.stop()
    bare = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    time.sleep(0.5)
    bare_rss = psutil.Process(bare.pid).memory_info().rss
    bare.communicate(b"")
    return {"rss": rss, "bare_rss": bare_rss, "start_seconds": ready}


# ------------------------------------------------------------------ main


def main() -> int:
    """Run the figures and print them with the commands that produced them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG_JSON", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--small", type=int, default=2000, help="small files copied to the stick")
    parser.add_argument("--big-mib", type=int, default=64, help="size of the big file copied, MiB")
    parser.add_argument("--events-files", type=int, default=2000, help="files in the CPU workload")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
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
    if shutil.which("inotifywait") is None:
        print("bench.sensors needs inotifywait (apt-get install inotify-tools)", file=sys.stderr)
        return 2
    if args.full:
        args.small, args.big_mib, args.idle, args.index_files = 10_000, 1024, 60.0, 100_000
        args.events_files = 10_000
    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp:
        work = Path(tmp)
        only = set(args.only.split(","))
        if "capture" in only:
            _print_capture(args, capture(work, args.small, args.big_mib))
        if "overhead" in only:
            _print_overhead(args, overhead(work, args.events_files))
        if "idle" in only:
            idl = idle(work, args.idle)
            print(f"idle: {100.0 * idl['cpu'] / idl['wall']:.3f}% of a core over {idl['wall']:.0f} s "
                  f"(target < 1%)")
        if "memory" in only:
            mem = memory(work, args.index_files)
            print(f"memory: RSS {mem['rss'] / (1 << 20):.1f} MiB with {args.index_files} tagged files "
                  f"indexed (target < 80 MiB; bare python {mem['bare_rss'] / (1 << 20):.1f} MiB, "
                  f"{mem['rss'] / mem['bare_rss']:.1f}x); ready in {mem['start_seconds']:.1f} s")
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


def _print_overhead(args: argparse.Namespace, ov: dict[str, Any]) -> None:
    ours = ov["ours_cpu"] / max(ov["ours_events"], 1) * 10_000
    theirs = ov["iw_cpu"] / max(ov["iw_events"], 1) * 10_000
    per_event = ours / theirs if theirs else float("inf")
    total = ov["ours_cpu"] / ov["iw_cpu"] if ov["iw_cpu"] else float("inf")
    print(f"overhead: {args.events_files} files created, written, read in a tagged tree ({ov['sensors']})")
    print(f"  baseline inotifywait -m -r: {ov['iw_events']} events, {ov['iw_cpu']:.2f} CPU s, "
          f"{theirs:.3f} CPU s / 10k events (1.00)")
    print(f"  sensors                   : {ov['ours_events']} events, {ov['ours_cpu']:.2f} CPU s, "
          f"{ours:.3f} CPU s / 10k events ({per_event:.1f}x); same workload in total {total:.1f}x; "
          f"gaps {ov['gaps']}")


if __name__ == "__main__":
    sys.exit(main())
