"""Durable alert delivery: a policy process killed between storing an alert and its sink's delivery
leaves the delivery owed in the store, and the next run sends it (real process, store and webhook)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from collector import config as cfg
from collector.alerts.dispatch import sink_key
from collector.policy.listener import PolicyListener
from collector.store import open_store
from tests.e2e.harness import free_port
from tests.policy.receivers import WebhookReceiver
from tests.policy.test_listener import pack, wait_until

ROOT = Path(__file__).resolve().parents[2]

# A policy process's listener that raises one alert and then waits (to be killed) while its webhook
# sink retries against a port nothing listens on yet.
_CHILD = """
import asyncio, sys
from collector.config import CollectorConfig
from collector.policy.listener import PolicyListener
from collector.store import open_store
from protos import events
from tests.policy.test_listener import copy_event

conf = CollectorConfig.model_validate_json(open(sys.argv[1]).read())

async def main() -> None:
    listener = PolicyListener.from_config(conf, open_store(conf.store))
    await listener.on_events([events.to_mapping(copy_event(i)) for i in (1, 2, 3)])
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_a_delivery_cut_off_by_a_crash_goes_out_from_the_outbox_at_the_next_start(tmp_path: Path) -> None:
    port = free_port()
    hook = cfg.WebhookSink(type="webhook", url=f"http://127.0.0.1:{port}/hook", max_retries=100,
                           timeout_seconds=1)  # fmt: skip
    conf = cfg.CollectorConfig(store=str(tmp_path / "collector.db"), policies=[str(pack(tmp_path))],
                               alerts=[hook], policy_reload_seconds=0,
                               alert_suppression_seconds=0)  # fmt: skip
    (tmp_path / "collector.json").write_text(conf.model_dump_json())
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "collector.json")], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    store = open_store(conf.store)
    try:
        assert wait_until(store.alerts, timeout=30), "the child stored no alert"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    [stored] = store.alerts()
    key = sink_key(hook)
    assert [(k, alert["id"]) for k, alert in store.owed([key])] == [(key, stored["id"])]

    receiver = WebhookReceiver(port=port)  # the receiver is back; a new run starts
    try:

        async def run() -> int:
            listener = PolicyListener.from_config(conf, store)
            resumed = listener.resume()
            deadline = time.monotonic() + 10
            while not receiver.received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await listener.aclose()
            return resumed

        assert asyncio.run(run()) == 1
        assert [r["json"]["id"] for r in receiver.received] == [stored["id"]]
        assert store.owed([key]) == []  # settled: a third run sends nothing again
    finally:
        receiver.close()
        store.close()
