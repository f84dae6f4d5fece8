"""PolicyListener on a real SQLite store and real sinks; rebuild after restart; hot reload and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from collector import config as cfg
from collector.policy import loader
from collector.policy.engine import PolicyEngine
from collector.policy.listener import PolicyListener
from collector.policy.reload import PolicyReloader
from collector.store import open_store
from protos import events
from protos import exfilguard_pb2 as pb
from tests.policy.helpers import event, fired

BULK = """
policies:
  - id: bulk
    title: Bulk copy
    severity: high
    when: {event.action: file.copy}
    aggregate: {by: [agent.id], window: 1h, count: {gte: 3}}
    summary: "{count} copies to {device.serial}"
    tags: [t]
"""
OTHER = BULK.replace("id: bulk", "id: bulk-renamed")
BROKEN = BULK.replace("window: 1h", "window: soon")


def config(tmp_path: Path, policies: Path) -> cfg.CollectorConfig:
    return cfg.CollectorConfig(
        store=str(tmp_path / "collector.db"),
        policies=[str(policies)],
        alerts=[cfg.JsonlSink(type="jsonl", path=str(tmp_path / "alerts.jsonl"))],
        policy_reload_seconds=0,
        alert_suppression_seconds=0,
    )


def pack(tmp_path: Path, text: str = BULK) -> Path:
    where = tmp_path / "policies"
    where.mkdir(exist_ok=True)
    (where / "bulk.yaml").write_text(text)
    return where


def copy_event(seq: int) -> pb.Event:
    ev = events.new_event("file.copy", device=pb.Device(serial="STICK-1"), file=pb.File(path=f"/m/{seq}"))
    ev.agent.id = "agent-1"
    ev.event.sequence = seq
    return ev


def wait_until(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_alerts_are_stored_with_evidence_and_sent(tmp_path: Path) -> None:
    conf = config(tmp_path, pack(tmp_path))
    store = open_store(conf.store)

    async def run() -> None:
        listener = PolicyListener.from_config(conf, store)
        await listener.on_events([events.to_mapping(copy_event(i)) for i in (1, 2, 3)])
        await listener.aclose()

    asyncio.run(run())
    stored = store.alerts()
    store.close()
    assert [a["policy.id"] for a in stored] == ["bulk"]
    assert len(stored[0]["evidence"]) == 3
    assert stored[0]["device.serial"] == "STICK-1"
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [stored[0]["id"]]


def test_restart_rebuilds_open_windows_from_the_store(tmp_path: Path) -> None:
    conf = config(tmp_path, pack(tmp_path))
    store = open_store(conf.store)
    store.ingest("agent-1", [copy_event(1), copy_event(2)])  # stored before the "restart"

    async def run() -> None:
        listener = PolicyListener.from_config(conf, store)
        assert listener.engine.stats()["open_groups"] == 1
        await listener.on_events([events.to_mapping(copy_event(3))])
        await listener.aclose()

    asyncio.run(run())
    stored = store.alerts()
    store.close()
    assert [(a["policy.id"], a["count"]) for a in stored] == [("bulk", 3)]


def test_hot_reload_with_a_broken_file_keeps_the_old_set(tmp_path: Path) -> None:
    where = pack(tmp_path)
    engine = PolicyEngine(loader.load([where]), suppression_seconds=0)
    reloader = PolicyReloader([where], engine)
    old = engine.set_hash
    assert reloader.check() is None  # nothing changed
    fired(engine, event("file.copy"), event("file.copy"))

    (where / "bulk.yaml").write_text(BROKEN)
    os.utime(where / "bulk.yaml", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert reloader.check() is None  # seen once: maybe still being written
    assert reloader.check() is False  # the same on the next check: loaded, and refused
    assert [(p.code, p.line) for p in reloader.last_problems if p.severity == "error"] == [("EG107", 7)]
    assert engine.set_hash == old
    assert fired(engine, event("file.copy")) == ["bulk"]  # the old set, windows and all, still runs

    (where / "bulk.yaml").write_text(OTHER)
    os.utime(where / "bulk.yaml", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert reloader.check() is None
    assert reloader.check() is True
    assert engine.set_hash != old
    assert fired(engine, event("file.copy"), event("file.copy"), event("file.copy")) == ["bulk-renamed"]


def test_a_file_still_being_written_is_not_loaded_until_it_holds_still(tmp_path: Path) -> None:
    where = pack(tmp_path)
    engine = PolicyEngine(loader.load([where]), suppression_seconds=0)
    reloader = PolicyReloader([where], engine)
    old = engine.set_hash
    # A deployment tool truncates the file, then writes it: the empty file is a valid set of none.
    (where / "bulk.yaml").write_text("")
    os.utime(where / "bulk.yaml", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert reloader.check() is None
    (where / "bulk.yaml").write_text(OTHER)
    os.utime(where / "bulk.yaml", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert reloader.check() is None  # changed again since the last look: still settling
    assert engine.set_hash == old
    assert reloader.check() is True
    assert fired(engine, event("file.copy"), event("file.copy"), event("file.copy")) == ["bulk-renamed"]


def test_sighup_reloads(tmp_path: Path) -> None:
    where = pack(tmp_path)
    conf = config(tmp_path, where)

    async def run() -> None:
        listener = PolicyListener.from_config(conf, None)
        old = listener.engine.set_hash
        (where / "bulk.yaml").write_text(OTHER)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if listener.engine.set_hash != old:
                break
            await asyncio.sleep(0.05)
        assert listener.reloader is not None
        assert listener.reloader.reloads == 1
        assert [p.id for p in listener.engine.policy_set.policies] == ["bulk-renamed"]
        await listener.aclose()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    asyncio.run(run())


def test_collector_refuses_to_start_on_a_broken_policy(tmp_path: Path) -> None:
    where = pack(tmp_path, BROKEN)
    (tmp_path / "collector.yaml").write_text(
        f"listen: 127.0.0.1:0\nstore: {tmp_path / 'c.db'}\nstate_dir: {tmp_path / 'state'}\n"
        f"policies: [{where}]\n"
        f"alerts: [{{type: jsonl, path: {tmp_path / 'a.jsonl'}}}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(tmp_path / "collector.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"{where / 'bulk.yaml'}:7:33:" in done.stderr
    assert "EG107" in done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from admin import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_alerts_cli_lists_stored_alerts_as_table_and_json(tmp_path: Path) -> None:
    conf = config(tmp_path, pack(tmp_path))
    store = open_store(conf.store)

    async def run() -> None:
        listener = PolicyListener.from_config(conf, store)
        await listener.on_events([events.to_mapping(copy_event(i)) for i in (1, 2, 3)])
        await listener.aclose()

    asyncio.run(run())
    store.close()
    (tmp_path / "collector.yaml").write_text(f"store: {conf.store}\npolicies: [{tmp_path / 'policies'}]\n")
    as_json = _cli("alerts", "--config", str(tmp_path / "collector.yaml"), "--json")
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert [(a["policy.id"], a["count"], a["device.serial"]) for a in found] == [("bulk", 3, "STICK-1")]
    table = _cli("alerts", "--config", str(tmp_path / "collector.yaml"))
    assert table.stdout.splitlines()[0].split()[:6] == ["ID", "TIME", "SEVERITY", "RISK", "STATUS", "POLICY"]
    assert "3 copies to STICK-1" in table.stdout


def test_policy_test_cli_replays_recorded_events(tmp_path: Path) -> None:
    where = pack(tmp_path)
    recorded = tmp_path / "events.jsonl"
    recorded.write_text("".join(json.dumps(events.to_mapping(copy_event(i))) + "\n" for i in (1, 2, 3)))
    done = _cli("policy", "test", str(where), "--events", str(recorded), "--json")
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(a["policy.id"], a["count"]) for a in alerts] == [("bulk", 3)]
    recorded.write_text("{not json\n")
    bad = _cli("policy", "test", str(where), "--events", str(recorded))
    assert bad.returncode == 1
    assert "line 1: not JSON" in bad.stderr
