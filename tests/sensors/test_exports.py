"""Exports and encodings of tagged data onto a stick (tests/sensors/matrix.py EXPORTS), end to end.

Real `exfilguard-agent` and `exfilguard-collector` processes, the shipped pack, a loop-device
stick and real tools: a SQLite database dumped as SQL and exported as CSV with the sqlite3
shell (which opens the database read-write only to query it), a CSV as base64 and as JSON.
What lands is text made from what was read and larger than it; each must raise a high or
critical alert naming the tagged source and the stick, and the database read stays a read.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collector.store import open_store
from tests.e2e.harness import Process, free_port, port_open, wait_for
from tests.sensors import matrix

pytestmark = [pytest.mark.root]
BIN = Path(sys.executable).parent


def test_exports_and_encodings_of_tagged_data_alert(tmp_path: Path, base: Path, loop_stick: Any) -> None:
    db = matrix.make_data(base)
    port = free_port()
    collector_yaml, agent_yaml = matrix.configs(tmp_path, db, port)
    processes = [Process([str(BIN / "exfilguard-collector"), "--config", str(collector_yaml)],
                         tmp_path / "collector.log").start()]
    try:
        wait_for(lambda: port_open(port), 30, "the collector")
        processes.append(Process([str(BIN / "exfilguard-agent"), "--config", str(agent_yaml)],
                                 tmp_path / "agent.log").start())
        unique = time.monotonic_ns()
        stick, point = matrix.plugged(loop_stick, tmp_path, f"EGX{unique % 100000}", f"EGEXPORT{unique}")
        env = matrix.environment(base, point, base.parent / "scratch", (base.parent / "shm").resolve())
        alerts = matrix.AlertLog(tmp_path / "alerts.jsonl")
        outputs = {case.name: {matrix.expand(o, env) for o in case.outputs} for case in matrix.EXPORTS}

        def missed() -> list[str]:
            return [c.name for c in matrix.EXPORTS
                    if matrix.detected(alerts.for_paths(outputs[c.name]), str(db), stick.serial) is None]

        def why() -> str:
            seen = {name: [(a["policy.id"], a["severity"], a.get("exfilguard.copy.identified_by"))
                           for a in alerts.for_paths(outputs[name])] for name in missed()}
            return "\n".join(f"{name}: {found}" for name, found in seen.items())

        for case in matrix.EXPORTS:
            matrix.run_case(case, env)
        wait_for(lambda: not missed(), 60, "an alert for every export", why)
        dump = matrix.detected(alerts.for_paths(outputs["sqlite-dump"]), str(db), stick.serial)
        assert dump is not None
        assert dump["exfilguard.source.path"] == str(db / "crm.sqlite")
        assert dump["process.name"] == "sqlite3"
        store = open_store(str(tmp_path / "collector.db"), readonly=True)
        try:
            crm = [e["event.action"] for e in store.events() if e.get("file.path") == str(db / "crm.sqlite")]
        finally:
            store.close()
        assert "file.read" in crm and "file.modify" not in crm  # queried, not changed
    finally:
        for process in reversed(processes):
            with contextlib.suppress(Exception):
                process.terminate()
            process.stop_quietly()
