"""End to end (root): real collector and agent processes, the shipped pack, a loop-device USB stick.

Copying a tagged "database" directory onto the stick must produce exactly the expected alerts,
the same ones in the JSONL sink, at a webhook receiver and at a syslog (UDP) listener.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from admin.demo import wait_for_mount
from collector.store import open_store
from tests.policy.helpers import after_hours
from tests.policy.receivers import SyslogUdpReceiver, WebhookReceiver

pytestmark = [pytest.mark.root, pytest.mark.slow]
BIN = Path(sys.executable).parent
PACK = Path(__file__).resolve().parents[2] / "policies"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False



@pytest.fixture
def stick(tmp_path: Path) -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mount and udev")
    from lab.loopstick import LoopStick, ensure_udevd

    ensure_udevd()
    loop = LoopStick(tmp_path / "stick", label="E2E-STICK", serial="EG-E2E-0001")
    loop.create()
    yield loop
    loop.remove()


def test_database_copy_raises_the_expected_alerts_in_every_sink(tmp_path: Path, stick: Any) -> None:
    db = tmp_path / "srv" / "db"
    db.mkdir(parents=True)
    for name in ("customers.csv", "orders.db", "invoices.db", "contracts.db", "pricing.db"):
        (db / name).write_bytes(os.urandom(64 * 1024))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook, syslog = WebhookReceiver(), SyslogUdpReceiver()
    (tmp_path / "collector.yaml").write_text(
        f"listen: 127.0.0.1:{port}\nstore: {tmp_path}/collector.db\nstate_dir: {tmp_path}/state\n"
        f"policies: [{PACK}]\ntimezone: UTC\n"
        "alerts:\n"
        f"  - {{type: jsonl, path: {tmp_path}/alerts.jsonl}}\n"
        f"  - {{type: webhook, url: '{webhook.url}'}}\n"
        f"  - {{type: syslog, address: '{syslog.address}', protocol: udp}}\n"
    )
    (tmp_path / "agent.yaml").write_text(
        f"collector: 127.0.0.1:{port}\ntls: {{insecure_loopback: true}}\nstate_dir: {tmp_path}/agent\n"
        f"tags:\n  {db}: [database, crown-jewels]\nremovable:\n  include_loop: true\n"
    )
    procs = []
    try:
        with (tmp_path / "processes.log").open("ab") as log:
            collector = [str(BIN / "exfilguard-collector"), "--config", str(tmp_path / "collector.yaml")]
            procs.append(subprocess.Popen(collector, stdout=log, stderr=log))
            wait_until(lambda: port_open(port), 30, "the collector")
            agent = [str(BIN / "exfilguard-agent"), "--config", str(tmp_path / "agent.yaml")]
            procs.append(subprocess.Popen(agent, stdout=log, stderr=log))
        jsonl = tmp_path / "alerts.jsonl"

        def alerts() -> list[dict[str, Any]]:
            # Only this test's stick: other tests on the machine may plug sticks of their own.
            text = jsonl.read_text() if jsonl.exists() else ""
            found = [json.loads(line) for line in text.splitlines() if line.strip()]
            return [a for a in found if a.get("device.serial") == "EG-E2E-0001"]

        stick.plug()
        mount = stick.mount()
        # The agent must have reported the mount (and so watch it) before the copy.
        store = open_store(str(tmp_path / "collector.db"), readonly=True)
        try:
            assert wait_for_mount(store, str(mount), dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), 60)
        finally:
            store.close()
        started = dt.datetime.now(dt.UTC)
        shutil.copytree(db, mount / "db")
        os.sync()
        expected = {"usb-unknown-device", "usb-copy-database", "usb-copy-whole-collection"}
        if after_hours(started):
            expected.add("usb-write-after-hours")
        wait_until(lambda: {a["policy.id"] for a in alerts()} >= expected, 60, f"alerts {sorted(expected)}")
        # Absence cannot be polled for: give a stray alert from the same batches a moment to show.
        time.sleep(1.0)
        got = alerts()
        assert sorted(a["policy.id"] for a in got) == sorted(expected)
        whole = next(a for a in got if a["policy.id"] == "usb-copy-whole-collection")
        assert whole["device.serial"] == "EG-E2E-0001"
        assert whole["exfilguard.alert.tag"] == "database, crown-jewels"
        assert whole["exfilguard.alert.coverage"] in ("80%", "100%")
        database = next(a for a in got if a["policy.id"] == "usb-copy-database")
        assert database["exfilguard.source.path"].startswith(str(db))
        assert database["file.path"].startswith(str(mount))
        ids = sorted(a["id"] for a in got)
        wait_until(lambda: {r["json"]["id"] for r in webhook.received} >= set(ids), 30, "the webhook")
        wait_until(lambda: len(syslog.received) >= len(ids), 30, "the syslog listener")
        hooked = [
            r["json"]["id"] for r in webhook.received if r["json"].get("device.serial") == "EG-E2E-0001"
        ]
        assert sorted(hooked) == ids
        logged = [
            re.search(r"externalId=(\S+)", line) for line in syslog.received if "cs1=EG-E2E-0001" in line
        ]
        assert sorted(m.group(1) for m in logged if m) == ids
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        webhook.close()
        syslog.close()
