"""Detection of the insider matrix, false alerts on the benign one, and time from write to alert.

    sudo .venv/bin/python -m bench.detection [--rounds 1] [--scale 4] [--only NAME ...]

Needs root (loop device, mount, udev, fanotify). Real processes: `exfilguard-collector` with the
shipped pack (suppression windows left out, so every technique raises its own alert) and
`exfilguard-agent` tagging a generated database (about 1.2 MiB x scale). Each round runs every
technique of tests/sensors/matrix.py (tar with gzip/xz/zstd, pipelines through gzip, sed,
openssl, gpg and split, staging through /tmp and /dev/shm, edited, appended, cut and filtered
copies, dd, install, mmap, rsync, zip, 7z, encrypted archives, a named pipe, another user, a
SQLite database dumped or exported with sqlite3, base64, a hex dump, JSON) into a directory of its
own on the stick, one at a time: the clock starts when the
technique's last command has finished and stops when a high or critical alert naming a tagged
source and the stick is read from the JSONL sink (polled every 10 ms). Then the benign cases
(an untagged backup tgz, a many-file write, a git clone, in-place edits, a build, photos by a
program that read tagged files earlier): any alert at medium or above for their files is a
false alert. Baseline, in the same run: a plain `cp` of one tagged file, the same clock.

The last line is JSON with these keys:
    detected, total            techniques that raised a high/critical alert, techniques run
    detection_rate             detected / total
    benign_false_alerts        alerts at medium or above for the benign cases' files
    benign_total               benign cases run (photos included)
    median_ms, p99_ms          write -> alert over the detected techniques
    baseline_median_ms         write -> alert of a plain cp of a tagged file
    median_ratio               median_ms / baseline_median_ms
    missed                     names of the techniques not detected (round-qualified)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _wait(predicate: Any, timeout: float, what: str, every: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    print(f"  timed out after {timeout:.0f} s waiting for {what}")
    return False


def main() -> int:
    """Run the matrix and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="times the matrix is run (default 1)")
    parser.add_argument("--scale", type=int, default=4, help="database size, x 1.2 MiB (default 4)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=[],
                        help="run only these techniques (tests/sensors/matrix.py case names)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.detection: skipped, needs root (loop devices, mount, udev, fanotify)")
        return 0
    from lab.loopstick import LoopStick, ensure_udevd
    from tests.e2e.harness import Process, free_port, port_open
    from tests.sensors import matrix

    top = Path(tempfile.mkdtemp(prefix="eg-detection-", dir="/tmp"))
    top.chmod(0o755)
    shm = Path(tempfile.mkdtemp(prefix="eg-detection-", dir="/dev/shm"))
    work = top / "run"
    work.mkdir()
    # a label of its own: its mount point is /media/<user>/<LABEL>, and two runs on one machine
    # shared it (one's unmount pulled the other's stick away mid-run)
    stick = LoopStick(top / "stick", label=f"EGDET{os.getpid() % 100000}", serial=f"EG-DETECT-{os.getpid()}",
                      size_mib=256)
    processes: list[Any] = []
    try:
        db = matrix.make_data(top / "data", scale=args.scale)
        port = free_port()
        collector_yaml, agent_yaml = matrix.configs(work, db, port)
        processes.append(Process([str(BIN / "exfilguard-collector"), "--config", str(collector_yaml)],
                                 work / "collector.log").start())
        if not _wait(lambda: port_open(port), 30, "the collector", 0.05):
            return 1
        processes.append(Process([str(BIN / "exfilguard-agent"), "--config", str(agent_yaml)],
                                 work / "agent.log").start())
        ensure_udevd()
        stick.create()
        stick.plug()
        point = stick.mount()
        point.chmod(0o1777)
        alerts = matrix.AlertLog(work / "alerts.jsonl")

        def alerted(paths: set[str]) -> dict[str, Any] | None:
            return matrix.detected(alerts.for_paths(paths), str(db), stick.serial)

        # the agent must watch the stick before the first write: a tagged copy's alert proves it
        for attempt in range(20):
            probe = f"{point}/probe{attempt}.db"
            # by a cp of its own: this process, the parent of every technique, reads nothing tagged
            subprocess.run(["cp", str(db / "ledger0.db"), probe], check=True)
            if _wait(lambda probe=probe: alerted({probe}) is not None, 3, "the stick watched", 0.05):
                break
        else:
            return 1
        baseline: list[float] = []
        for i in range(5):
            dest = f"{point}/baseline{i}.db"
            subprocess.run(["cp", str(db / f"ledger{i % 3}.db"), dest], check=True)
            done = time.time()
            if _wait(lambda dest=dest: alerted({dest}) is not None, 30, f"baseline copy {i}"):
                found = alerted({dest})
                assert found is not None
                baseline.append(found["seen"] - done)

        latencies: list[float] = []
        missed: list[str] = []
        total = 0
        benign_outputs: set[str] = set()
        benign_total = 0
        for round_no in range(args.rounds):
            target = point / f"round{round_no}"
            target.mkdir()
            target.chmod(0o1777)
            scratch = top / f"scratch{round_no}"
            scratch.mkdir()
            scratch.chmod(0o755)
            round_shm = shm / f"round{round_no}"
            round_shm.mkdir()
            env = matrix.environment(top / "data", target, scratch, round_shm)
            signal = scratch / "photos.signal"
            reader = subprocess.Popen([sys.executable, "-c", matrix.PHOTOS_READER, str(target), str(signal),
                                       *(str(db / n) for n in ("customers.csv", "orders.sql", "ledger0.db"))],
                                      stdin=subprocess.PIPE, text=True)
            _wait(lambda signal=signal: signal.exists() and signal.read_text() == "read", 30, "the reads")
            for case in (*matrix.THEFTS, *matrix.EXPORTS):
                if args.only and case.name not in args.only:
                    continue
                total += 1
                outputs = {matrix.expand(o, env) for o in case.outputs}
                done = matrix.run_case(case, env)
                if _wait(lambda case=case, outputs=outputs: matrix.caught(case, outputs, alerts, str(db),
                                                                          stick.serial), 30, case.name):
                    found = alerted(outputs)
                    assert found is not None
                    latencies.append(found["seen"] - done)
                else:
                    missed.append(f"{case.name}#{round_no}")
            for case in matrix.BENIGN:
                benign_total += 1
                matrix.run_case(case, env)
                benign_outputs |= {matrix.expand(o, env) for o in case.outputs}
            reader.communicate("go\n", timeout=60)
            benign_total += 1
            benign_outputs |= {matrix.expand(o, env) for o in matrix.PHOTOS}
            print(f"round {round_no + 1}: {total - len(missed)}/{total} techniques detected so far")
        # every event before it is evaluated once the sentinel's alert is out
        sentinel = f"{point}/sentinel.db"
        # by a cp of its own: this process feeds the photo program's stdin, and a tagged read of
        # its own while the photos are examined would flow into them (the pipe's upstream)
        subprocess.run(["cp", str(db / "ledger1.db"), sentinel], check=True)
        _wait(lambda: alerted({sentinel}) is not None, 60, "the sentinel's alert", 0.05)
        false = matrix.false_alerts(alerts.for_paths(benign_outputs))
        for alert in false:
            print(f"  false alert: {alert['policy.id']} {alert['severity']} {alert.get('file.path')} "
                  f"({alert.get('exfilguard.copy.identified_by')}: {alert.get('exfilguard.copy.sources')})")
        detected = total - len(missed)
        ms = 1000.0
        base_median = statistics.median(baseline) * ms if baseline else 0.0
        median = statistics.median(latencies) * ms if latencies else 0.0
        p99 = _percentile(latencies, 0.99) * ms if latencies else 0.0
        print(f"detected {detected}/{total} techniques; missed: {', '.join(missed) or 'none'}")
        print(f"benign: {len(false)} alerts at medium or above over {benign_total} cases")
        print(f"write -> alert: median {median:.0f} ms, p99 {p99:.0f} ms; plain cp baseline median "
              f"{base_median:.0f} ms (ratio {median / base_median if base_median else 0:.2f})")
        print(json.dumps({
            "detected": detected, "total": total,
            "detection_rate": round(detected / total, 4) if total else 0,
            "benign_false_alerts": len(false), "benign_total": benign_total,
            "median_ms": round(median, 1), "p99_ms": round(p99, 1),
            "baseline_median_ms": round(base_median, 1),
            "median_ratio": round(median / base_median, 2) if base_median else None, "missed": missed,
        }))
        return 0 if detected == total and not false else 1
    finally:
        for process in reversed(processes):
            process.terminate()
            process.stop_quietly()
        stick.remove()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
