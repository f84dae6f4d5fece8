"""Durable alert delivery across a fleet: the evaluator's collector killed (-9) after it committed
an alert but before its webhook took it; the collector that takes the lead over sends it from the
store's alert outbox. Real collectors, a real PostgreSQL, a real webhook receiver."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import config as cfg
from collector.alerts.dispatch import sink_key
from collector.store import open_store
from tests.e2e.harness import free_port, wait_for
from tests.fleet.harness import Fleet, StreamingAgent
from tests.fleet.test_policy_state import POLICY
from tests.policy.receivers import WebhookReceiver

pytestmark = pytest.mark.slow


def test_a_delivery_the_dead_evaluator_owed_is_sent_by_the_next_one(tmp_path: Path, pg_url: str) -> None:
    port = free_port()  # nothing listens yet: the webhook retries
    hook = f"  - type: webhook\n    url: http://127.0.0.1:{port}/hook\n    max_retries: 100\n"
    (tmp_path / "drip.yaml").write_text(POLICY)
    fleet = Fleet(tmp_path / "fleet", pg_url, 2, policies=(tmp_path / "drip.yaml",), alerts=hook)
    agent: StreamingAgent | None = None
    receiver: WebhookReceiver | None = None
    try:
        fleet.start_collector(0)
        wait_for(lambda: "this collector leads" in fleet.collector(0).log_text(), 30, "collector 0 to lead")
        fleet.start_collector(1)
        agent = StreamingAgent(fleet, "host-a", [1])
        agent.copies("erin", 40)  # the 40-copy threshold of user-drip
        wait_for(lambda: len(fleet.stored_alerts("user-drip")) == 1, 30, "the alert stored", fleet.diagnose)
        fleet.crash(0)  # committed, owed, never delivered
        receiver = WebhookReceiver(port=port)
        got = receiver.wait_for(1, timeout=30)
        assert [r["json"]["id"] for r in got] == [a["id"] for a in fleet.stored_alerts("user-drip")]
        assert "this collector leads" in fleet.collector(1).log_text()
        key = sink_key(cfg.WebhookSink(type="webhook", url=f"http://127.0.0.1:{port}/hook"))
        store = open_store(pg_url)
        try:
            wait_for(lambda: store.owed([key]) == [], 10, "the delivery settled in the store")
        finally:
            store.close()
    finally:
        if agent is not None:
            agent.stop()
        if receiver is not None:
            receiver.close()
        fleet.close()
