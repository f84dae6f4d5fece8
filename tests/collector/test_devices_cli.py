"""`exfilguard devices` as a process; a running collector's policy listener seeing an approval made
by the CLI without a restart, and a restarted one starting from the baselines the first saved.
(The tables' contract runs on both stores in test_store_devices.py; the CLI is the same code.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from collector import config as cfg
from collector.alerts.alert import RaisedAlert
from collector.policy.listener import PolicyListener
from collector.store import open_store
from tests.helpers import run_cli

PACK = Path(__file__).resolve().parents[2] / "policies"
NOW = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)  # events in the past: never clamped to now


def _ok(*args: str) -> str:
    done = run_cli(*args, env={"SUDO_USER": "carol"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def attach(serial: str, user: str, seconds: float = 0.0) -> dict[str, Any]:
    at = NOW + dt.timedelta(seconds=seconds)
    return {
        "@timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event.id": f"ev-{serial}-{seconds}",
        "event.action": "device.attach",
        "agent.id": "agent-1",
        "host.name": "ws-1",
        "user.name": user,
        "device.serial": serial,
        "device.type": "disk",
        "device.vendor": "SanDisk",
        "device.model": "Cruzer",
        "device.vendor_id": "0781",
        "device.product_id": "5567",
    }


@pytest.fixture
def collector_config(tmp_path: Path) -> tuple[Path, cfg.CollectorConfig]:
    location = str(tmp_path / "collector.db")
    policies = tmp_path / "policies"
    shutil.copytree(PACK, policies)
    path = tmp_path / "collector.yaml"
    path.write_text(f"store: '{location}'\nstate_dir: {tmp_path / 'state'}\npolicies: ['{policies}']\n")
    conf = cfg.CollectorConfig(
        store=location,
        policies=[str(policies)],
        alerts=[cfg.JsonlSink(type="jsonl", path=str(tmp_path / "alerts.jsonl"))],
        policy_reload_seconds=0,
        alert_suppression_seconds=0,
    )
    return path, conf


# Known to flake (one failure in several runs, cause not yet found: CONTRIBUTING.md); one rerun.
@pytest.mark.flaky(reruns=1)
def test_seen_approved_by_the_cli_and_learned(collector_config: tuple[Path, cfg.CollectorConfig]) -> None:
    path, conf = collector_config
    c = ("--config", str(path))
    store = open_store(conf.store)

    async def run() -> list[str]:
        listener = PolicyListener.from_config(conf, store)
        raised: list[str] = []
        try:
            def note(alerts: list[RaisedAlert], *, stored: bool = False) -> None:
                raised.extend(a.policy_id for a in alerts)

            listener.raise_alerts = note  # type: ignore[method-assign]
            await listener.on_events([attach("STICK-A", "alice"), attach("STICK-B", "bob")])
            assert raised == ["usb-unknown-device", "usb-unknown-device"]
            assert listener.keeper is not None
            await asyncio.to_thread(listener.keeper.due(final=True) or (lambda: None))
            listed = json.loads(await asyncio.to_thread(_ok, "devices", *c, "--json"))
            assert sorted((d["serial"], sorted(d["users"]), d["approved_for"]) for d in listed) == [
                ("STICK-A", ["alice"], []),
                ("STICK-B", ["bob"], []),
            ]
            await asyncio.to_thread(
                _ok, "devices", "approve", "STICK-A", "--user", "alice", "--note", "hers", *c
            )
            deadline = time.monotonic() + 10
            while not listener.engine.behaviour.approvals.approved_for("STICK-A", "alice", "all"):  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the listener never saw the approval"
                listener.keeper._checked_at = 0.0  # ask the store now, not in 2 s
                work = listener.keeper.due()
                if work is not None:
                    await asyncio.to_thread(work)
            raised.clear()
            await listener.on_events([attach("STICK-A", "alice", 90_000), attach("STICK-A", "bob", 90_001)])
            return raised
        finally:
            await listener.aclose()
            store.close()

    # Approved for alice only: bob plugging the same stick in is still unapproved.
    assert asyncio.run(run()) == ["usb-unknown-device"]
    # A restarted collector starts from what the first one saved at shutdown, not from nothing.
    reopened = open_store(conf.store)

    async def restart() -> tuple[int, list[str], bool]:
        listener = PolicyListener.from_config(conf, reopened)
        try:
            behaviour = listener.engine.behaviour
            assert behaviour is not None
            alice = behaviour.baselines.users["alice"]
            return (
                alice.active_days,
                sorted(behaviour.sightings.devices),
                behaviour.approvals.approved_for("STICK-A", "alice", "all"),
            )
        finally:
            await listener.aclose()
            reopened.close()

    assert asyncio.run(restart()) == (2, ["STICK-A", "STICK-B"], True)
    out = _ok("devices", *c)
    assert "STICK-A" in out and "user:alice" in out
    learned = _ok("devices", "learn", "--for", "7d", *c)
    assert "pending review" in learned
    pending = json.loads(_ok("devices", "proposals", "--json", *c))
    assert {(p["serial"], p["subject"]) for p in pending} == {("STICK-A", "bob"), ("STICK-B", "bob")}
    _ok("devices", "accept", "STICK-B", "--note", "reviewed with bob's manager", *c)
    history = json.loads(_ok("devices", "history", "--json", *c))
    assert [(h["action"], h["serial"], h["by"]) for h in history] == [
        ("approve", "STICK-A", "carol"),
        ("accept", "STICK-B", "carol"),
    ]
    refused = run_cli("devices", "approve", "STICK-C", "--note", " ", *c)
    assert refused.returncode == 2 and "note" in refused.stderr
    nothing = run_cli("devices", "revoke", "STICK-Z", "--note", "gone", *c)
    assert nothing.returncode == 3 and "STICK-Z" in nothing.stderr
