"""File names an insider chooses, followed from a real agent to the officer and the auditor.

A real agent process (fanotify on a tagged tree, a loop-device stick through udev) and a real
collector with the shipped policies: tagged files named with a newline that would forge a syslog
record, an ANSI escape, CEF and syslog syntax (`|`, `=`, `\\`, `]`) and bytes that are not UTF-8
are copied to the stick. Each copy is stored, the alert goes out as one syslog datagram and one
JSONL line, and CSV and JSON Lines exports of all of it verify.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.loopstick import LoopStick
from tests.devices import loop_stick, udevd
from tests.e2e.harness import Pipeline, by_action, wait_for
from tests.helpers import run_cli
from tests.policy.receivers import SyslogUdpReceiver

__all__ = ["loop_stick", "udevd"]

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
# The newline one first: the policy folds later copies into its alert.
NAMES = [b"q3\n<10>1 2026-01-01T00:00:00Z ws FORGED - - - x.csv", b"esc\x1b[2J.csv",
         b"cef|x=y\\]}.csv", b"bad\xff\xfe.csv"]


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path)
    yield pipe
    pipe.close()


def test_hostile_names_reach_the_alert_sinks_and_exports_intact(
        pipeline: Pipeline, loop_stick: Any, tmp_path: Path) -> None:
    receiver = SyslogUdpReceiver()
    tagged = tmp_path / "secret"
    tagged.mkdir()
    for i, name in enumerate(NAMES):
        (tagged / os.fsdecode(name)).write_bytes(os.urandom(6000 + 111 * i))
    config = pipeline.collector_config.read_text().replace(
        f"policies: [{pipeline.collector_dir / 'policies'}]", f"policies: [{REPO / 'policies'}]")
    config += f"  - type: syslog\n    address: {receiver.address}\n    protocol: udp\n"
    pipeline.collector_config.write_text(config)
    with pipeline.agent_config.open("a") as agent_yaml:
        agent_yaml.write(f"tags:\n  {tagged}: [source-code]\nremovable:\n  include_loop: true\n")
    stick: LoopStick = loop_stick(label=f"HE{os.getpid() % 10000}", serial=f"EGHE{os.getpid()}")
    try:
        pipeline.start_collector()
        pipeline.start_agent(sensors=True)
        wait_for(lambda: bool(by_action(pipeline.delivered(), "agent.start")), 60, "agent.start",
                 pipeline.diagnose)
        stick.plug()
        point = str(stick.mount())
        wait_for(lambda: any(e.get("exfilguard.mount.point") == point
                             for e in by_action(pipeline.delivered(), "device.mount")),
                 60, "the stick's mount", pipeline.diagnose)
        for name in NAMES:
            subprocess.run(["cp", "--", str(tagged / os.fsdecode(name)), point], check=True, timeout=30)
        shown = [f"{point}/{name.decode('utf-8', 'backslashreplace')}" for name in NAMES]

        def copied() -> set[str]:
            return {e["file.path"] for e in by_action(pipeline.delivered(), "file.copy")}

        wait_for(lambda: set(shown) <= copied(), 60, "every copy stored", pipeline.diagnose)
        alerts_file = pipeline.collector_dir / "alerts.jsonl"
        wait_for(lambda: alerts_file.exists() and bool(alerts_file.read_text()), 60, "an alert",
                 pipeline.diagnose)
        alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
        first = next(a for a in alerts if a["policy.id"] == "usb-copy-tagged-file")
        assert first["file.path"] == shown[0]
        datagrams = receiver.wait_for(len(alerts), timeout=20)
        assert len(datagrams) == len(alerts)  # one record per alert: the newline forged none
        for datagram in datagrams:
            assert datagram.startswith("<") and "\n" not in datagram and "\x1b" not in datagram
        assert any("FORGED" in d and "filePath=" in d for d in datagrams)
    finally:
        receiver.close()
    key = tmp_path / "collector.pub"
    exported = run_cli("key", "export", "--config", str(pipeline.collector_config), "--out", str(key))
    assert exported.returncode == 0, exported.stderr
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"case.{fmt}"
        made = run_cli("export", "--config", str(pipeline.collector_config), "--format", fmt,
                       "--out", str(out), "--no-progress")
        assert made.returncode == 0, made.stderr
        checked = run_cli("verify", str(out), "--public-key", str(key))
        assert checked.returncode == 0, checked.stdout + checked.stderr
