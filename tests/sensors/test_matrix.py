"""The insider and benign matrices (tests/sensors/matrix.py) against one real agent and collector.

Real `exfilguard-agent` and `exfilguard-collector` processes, the shipped policy pack, a
loop-device stick, real tools (tar with gzip/xz/zstd, openssl, gpg, split, sed, rsync, zip,
another user). Every theft raises a high or critical alert naming a tagged source and the
stick; every benign case (a process that read tagged files earlier writing photos included)
stays below medium. Then the agent is killed, a tarball of the database is written, and the
restarted agent reports it as written while it was not running (usb-late-copy).

The pack runs without its `suppress:` windows: they fold repeats by user and stick, and here
one user on one stick tries every technique in a minute; each must be seen on its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.store import StoreError, open_store
from tests.e2e.harness import Process, free_port, port_open, wait_for
from tests.sensors import matrix

pytestmark = [pytest.mark.root, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _stored(tmp_path: Path, wanted: Callable[[dict[str, Any]], bool]) -> bool:
    store = open_store(str(tmp_path / "collector.db"), readonly=True)
    try:
        return any(wanted(e) for e in store.events())
    except StoreError:  # the collector may be creating the store right now
        return False
    finally:
        store.close()


# Known to flake (one failure in several runs, cause not yet found: CONTRIBUTING.md); one rerun.
@pytest.mark.flaky(reruns=1)
def test_insider_techniques_alert_and_benign_work_does_not(tmp_path: Path, base: Path,
                                                           loop_stick: Any) -> None:
    db = matrix.make_data(base)
    port = free_port()
    collector_yaml, agent_yaml = matrix.configs(tmp_path, db, port)
    collector = Process([str(BIN / "exfilguard-collector"), "--config", str(collector_yaml)],
                        tmp_path / "collector.log").start()
    agent_argv = [str(BIN / "exfilguard-agent"), "--config", str(agent_yaml)]
    agent = Process(agent_argv, tmp_path / "agent.log").start()
    processes = [collector, agent]
    reader: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: port_open(port), 30, "the collector")
        unique = time.monotonic_ns()
        stick, point = matrix.plugged(loop_stick, tmp_path, f"EGM{unique % 100000}", f"EGMATRIX{unique}")
        env = matrix.environment(base, point, base.parent / "scratch", (base.parent / "shm").resolve())
        alerts = matrix.AlertLog(tmp_path / "alerts.jsonl")

        # a long-lived program reads tagged files now and saves photos to the stick at the end
        signal = base.parent / "scratch" / "photos.signal"
        reader = subprocess.Popen([sys.executable, "-c", matrix.PHOTOS_READER, str(point), str(signal),
                                   *(str(db / n) for n in ("customers.csv", "orders.sql", "ledger0.db"))],
                                  stdin=subprocess.PIPE, text=True)
        assert reader.stdin is not None
        wait_for(lambda: signal.exists() and signal.read_text() == "read", 30, "the photo program's reads")
        pid = reader.pid
        wait_for(lambda: _stored(tmp_path, lambda e: e.get("event.action") == "file.read"
                                 and e.get("process.pid") == pid), 30, "the photo program's tagged reads")

        cases = (*matrix.CI_THEFTS, *matrix.BENIGN)
        outputs = {case.name: {matrix.expand(o, env) for o in case.outputs} for case in cases}
        outputs["photos"] = {matrix.expand(o, env) for o in matrix.PHOTOS}

        def missed() -> list[str]:
            return [c.name for c in matrix.CI_THEFTS
                    if not matrix.caught(c, outputs[c.name], alerts, str(db), stick.serial)]

        def why() -> str:
            lines = []
            for name in missed():
                seen = [(a["file.path"], a["policy.id"], a["severity"], a.get("exfilguard.source.path"),
                         a.get("process.name"), a.get("user.name")) for a in alerts.for_paths(outputs[name])]
                lines.append(f"{name}: {seen}")
            return "\n".join(lines)

        for case in matrix.CI_THEFTS:
            matrix.run_case(case, env)
        # The benign in-place edit rewrites customers.csv: run only once every theft is judged,
        # or an agent still catching up would compare a theft's copy with the edited source.
        wait_for(lambda: not missed(), 60, "an alert for every theft", why)
        for case in matrix.BENIGN:
            matrix.run_case(case, env)
        reader.communicate("go\n", timeout=30)
        assert signal.read_text() == "written"
        # the photos are written last: once they are reported, every benign case's alerts are out
        wait_for(lambda: _stored(tmp_path, lambda e: e.get("event.action") == "file.copy"
                                 and e.get("file.path") in outputs["photos"]), 30, "the photos' file.copy")
        sentinel = f"{point}/sentinel.db"
        shutil.copyfile(db / "ledger1.db", sentinel)
        wait_for(lambda: bool(alerts.for_paths({sentinel})), 30, "the sentinel copy's alert")
        for case in (*matrix.BENIGN, matrix.Case("photos", "", matrix.PHOTOS, False)):
            false = matrix.false_alerts(alerts.for_paths(outputs[case.name]))
            assert false == [], f"{case.name}: {[(a['policy.id'], a['severity']) for a in false]}"
        guesses = [a for a in alerts.for_paths(outputs["photos"]) if a["policy.id"] == "usb-possible-copy"]
        assert guesses and all("guess" in a["summary"] for a in guesses)
        found = matrix.detected(alerts.for_paths(outputs["tar-czf"]), str(db), stick.serial)
        assert found is not None and "/" in found["exfilguard.source.path"]
        assert not Path(found["exfilguard.source.path"]).is_dir()  # a file, never the directory

        # killed, a copy while nobody watched, started again: the copy is reported late
        agent.kill9()
        down = time.time()
        late = f"{point}/late.tgz"
        subprocess.run(["tar", "czf", late, "-C", str(base), "db"], check=True)
        agent = Process(agent_argv, tmp_path / "agent.log").start()
        processes.append(agent)
        wait_for(lambda: any(a["policy.id"] == "usb-late-copy" for a in alerts.for_paths({late})), 60,
                 "the late copy's alert", lambda: str(alerts.for_paths({late})))
        alert = next(a for a in alerts.for_paths({late}) if a["policy.id"] == "usb-late-copy")
        assert alert["exfilguard.late"] is True
        assert alert["exfilguard.source.path"].startswith(str(db) + "/")
        start = dt.datetime.fromisoformat(alert["exfilguard.late_window.start"]).timestamp()
        end = dt.datetime.fromisoformat(alert["exfilguard.late_window.end"]).timestamp()
        assert start <= down <= end
        assert "not running" in alert["summary"]
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
            reader.communicate(timeout=10)
        for process in reversed(processes):
            with contextlib.suppress(Exception):
                process.terminate()
            process.stop_quietly()
