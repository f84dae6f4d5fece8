"""An event the fanotify sensor fails to handle is counted in an agent.gap, and the sensor goes on.

A real fanotify group on a real directory; the handler of tagged accesses raises for one file
(standing for a defect not found yet). Before, such an event was logged and gone: no agent.gap
said that anything was lost.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.sensors import failures
from agent.sensors.access import ExactAccessSensor
from agent.sensors.devices import DeviceSensor
from agent.sensors.failures import FailedEvents
from agent.sensors.fanotify import Access, FanotifySensor
from agent.sensors.files import FileSensor
from agent.sensors.mounts import MountTable
from agent.sensors.wiring import build_sensors
from common.agentconfig import AgentConfig
from protos.events import to_mapping
from tests.helpers import wait_for

pytestmark = pytest.mark.root


def test_a_failing_handler_is_counted_and_the_sensor_keeps_reading(tmp_path: Path) -> None:
    (tmp_path / "boom.db").write_bytes(b"x" * 100)
    (tmp_path / "fine.db").write_bytes(b"y" * 100)
    handled: list[str] = []
    failures = threading.Semaphore(0)

    def on_tagged(access: Access) -> None:
        if access.path.endswith("boom.db"):
            raise RuntimeError("a defect")
        handled.append(access.path)

    sensor = FanotifySensor(tagged_as=lambda p: ("db",) if p.startswith(str(tmp_path)) else None,
                            is_removable=lambda _p: False, on_tagged=on_tagged,
                            on_removable=lambda _a: None, on_failure=failures.release)
    sensor.start()
    try:
        sensor.mark_dir(str(tmp_path))
        # read by another process: the sensor leaves its own process's reads out
        subprocess.run(["cat", str(tmp_path / "boom.db")], check=True, capture_output=True, timeout=10)
        assert failures.acquire(timeout=10)
        subprocess.run(["cat", str(tmp_path / "fine.db")], check=True, capture_output=True, timeout=10)
        wait_for(lambda: str(tmp_path / "fine.db") in handled, 10, "the next event handled")
    finally:
        sensor.stop()


def test_failures_become_one_agent_gap_with_their_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failures, "GAP_SECONDS", 0.5)
    emitted: list[dict[str, Any]] = []
    failed = FailedEvents(lambda e: emitted.append(to_mapping(e)), "fanotify")

    def gaps() -> list[tuple[int, str]]:
        return [(e["exfilguard.gap.lost"], e["event.reason"]) for e in emitted
                if e.get("exfilguard.gap.reason") == "handling_failed"]

    failed()  # the first: reported at once
    assert [lost for lost, _ in gaps()] == [1]
    for _ in range(5):  # more within the interval: one gap when it ends
        failed()
    wait_for(lambda: len(gaps()) == 2, 5, "the second gap")
    assert [lost for lost, _ in gaps()] == [1, 5]
    failed()
    failed.flush()  # what is pending at stop is reported then
    assert sum(lost for lost, _ in gaps()) == 7
    assert "fanotify events could not be handled" in gaps()[0][1]


def test_the_sensors_report_their_failures_in_a_gap_at_stop(tmp_path: Path) -> None:
    """The file, udev and mount table sensors count failures and report them at stop at the latest."""
    emitted: list[dict[str, Any]] = []
    config = AgentConfig(tags={str(tmp_path): ["db"]})
    sensors = build_sensors(config, lambda e: emitted.append(to_mapping(e)))
    kinds = (ExactAccessSensor, FileSensor, DeviceSensor, MountTable)
    counters = [s.failed for s in sensors if isinstance(s, kinds)]
    assert len(counters) == 4
    for counter in counters:
        counter()
        counter()  # within the interval: pending until stop
    for sensor in reversed(sensors):
        sensor.stop()
    lost = [e["exfilguard.gap.lost"] for e in emitted if e.get("exfilguard.gap.reason") == "handling_failed"]
    assert sorted(lost) == [1] * 8
