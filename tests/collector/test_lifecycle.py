"""The collector process's life: bad config, SIGTERM, kill -9 mid-stream, registry, `exfilguard agents`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from protos import chain
from protos import exfilguard_pb2 as pb
from tests.helpers import (
    REPO,
    AgentStream,
    iter_stored,
    make_event,
    make_events,
    run_cli,
    start_collector,
    stored_sequences,
    wait_for,
    write_collector_config,
)


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("listen: 127.0.0.1:50051\nstore: x.db\nmax_streams: 0\n")
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{config}:3:" in lines[0]
    assert "max_streams" in lines[0]
    assert not (tmp_path / "x.db").exists()


def test_missing_config_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(tmp_path / "nope.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "nope.yaml" in done.stderr


def test_a_store_of_a_newer_schema_exits_2_and_says_why(tmp_path: Path) -> None:
    # A damaged or newer store needs an admin (2); one that is unavailable may come back (1).
    config = write_collector_config(tmp_path)
    with sqlite3.connect(tmp_path / "collector.db") as db:
        db.execute("PRAGMA user_version = 99")
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "exfilguard-collector: " in done.stderr and "schema version 99 is newer" in done.stderr


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path / "a")
    with start_collector(config) as first:
        clash = write_collector_config(tmp_path / "b", listen=first.address)
        done = subprocess.run(
            [sys.executable, "-m", "collector.main", "--config", str(clash)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 1
        assert first.address in done.stderr
        assert first.stop() == 0


def _agents(config: Path) -> list[dict[str, Any]]:
    done = run_cli("agents", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def _agent(config: Path, agent_id: str) -> dict[str, Any] | None:
    return next((a for a in _agents(config) if a["id"] == agent_id), None)


def _agent_where(config: Path, agent_id: str, **fields: Any) -> dict[str, Any]:
    """The agent's entry if it has all `fields`, else an empty dict (for wait_for)."""
    entry = _agent(config, agent_id) or {}
    return entry if all(entry.get(k) == v for k, v in fields.items()) else {}


def test_registry_shows_connection_backlog_and_gaps(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path)
    with start_collector(config) as collector:
        with AgentStream(collector.address, "ws-17", hostname="ws17.example", version="9.9.9") as stream:
            assert stream.ack() == 0
            lost = pb.Extensions(gap=pb.Gap(lost=42, reason="spool_full"))
            gap = make_event("ws-17", 2, action="agent.gap", exfilguard=lost)
            stream.send_events([make_event("ws-17", 1), gap])
            assert stream.ack() == 2
            stream.heartbeat(backlog=7)
            entry: dict[str, Any] = wait_for(
                lambda: _agent_where(config, "ws-17", connected=True, backlog=7),
                what="ws-17 connected with backlog 7 in `exfilguard agents --json`",
            )
            assert entry["host"] == "ws17.example"
            assert entry["version"] == "9.9.9"
            assert entry["gaps"] == 1
            assert entry["lost"] == 42
            assert entry["watermark"] == 2
            assert entry["first_seen"] <= entry["last_seen"]
            assert entry["last_heartbeat"]
            # Resending the gap does not count it twice.
            stream.send_events([gap])
            assert stream.ack() == 2
        wait_for(lambda: _agent_where(config, "ws-17", connected=False), what="ws-17 disconnected")
        after = _agent(config, "ws-17")
        assert after is not None
        assert (after["gaps"], after["lost"], after["first_seen"]) == (1, 42, entry["first_seen"])
        table = run_cli("agents", "--config", str(config))
        assert table.returncode == 0
        header, row = table.stdout.splitlines()[:2]
        assert header.split()[:3] == ["ID", "HOST", "VERSION"]
        assert row.split()[:5] == ["ws-17", "ws17.example", "9.9.9", "offline+lost", "no"]
        assert collector.stop() == 0


def test_agents_cli_without_a_store_says_so(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path)
    done = run_cli("agents", "--config", str(config))
    assert done.returncode == 1
    assert "collector.db" in done.stderr


def test_sigterm_stops_cleanly_and_marks_agents_disconnected(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path)
    with start_collector(config) as collector:
        stream = AgentStream(collector.address, "stays")
        assert stream.ack() == 0
        stream.send_events(make_events("stays", 1, 10))
        assert stream.ack() == 10
        wait_for(lambda: _agent_where(config, "stays", connected=True), what="connected flag")
        assert collector.stop() == 0
        stream.close()
    assert _agent_where(config, "stays", connected=False)
    assert "collector stopped" in collector.log()


def _chain_end(store: Path, agent_id: str) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        row = db.execute("SELECT sealed FROM chains WHERE agent_id = ?", (agent_id,)).fetchone()
    return int(row[0]) if row else 0


def test_kill_9_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path)
    store = tmp_path / "collector.db"
    total, size = 6_000, 250
    collector = start_collector(config)
    acked = 0
    with AgentStream(collector.address, "crash") as stream:
        assert stream.ack() == 0
        # Keep several batches in flight, as a real agent does, then kill -9 without warning.
        for first in range(1, 3_001, size):
            stream.send_events(make_events("crash", first, first + size - 1))
        acked = stream.ack()
        acked = max(acked, stream.ack())
        collector.kill()
    assert acked >= size
    collector = start_collector(config)
    with collector, AgentStream(collector.address, "crash") as stream:
        # The agent resends everything after what the collector says it holds.
        watermark = stream.ack()
        assert watermark >= acked
        for first in range(watermark + 1, total + 1, size):
            stream.send_events(make_events("crash", first, min(first + size - 1, total)))
            assert stream.ack() == min(first + size - 1, total)
        wait_for(lambda: _chain_end(store, "crash") == total, timeout=60, what="the sealer to chain all")
        assert collector.stop() == 0
    assert stored_sequences(store, "crash") == list(range(1, total + 1))
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    prev = chain.GENESIS
    for mapping in iter_stored(store, "crash"):
        prev = chain.link(prev, mapping)
        assert mapping["exfilguard.chain.hash"] == prev.hex()


def test_open_files_limit_too_low_for_max_streams_is_said(tmp_path: Path) -> None:
    # each agent stream is a socket: the soft limit is lifted to the hard one, and a hard limit
    # below what max_streams needs is logged with what to raise
    code = (
        "import logging, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "from collector.config import CollectorConfig\n"
        "from collector.main import _raise_open_files_limit\n"
        "for streams in (10000, 1000):\n"
        "    config = CollectorConfig.model_validate({'store': 'x.db', 'max_streams': streams})\n"
        "    _raise_open_files_limit(config)\n"
        "    print('soft', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("open files limit is 4096, but max_streams 10000")
    assert "LimitNOFILE" in lines[0]
    assert lines[1:] == ["soft 4096", "soft 4096"]  # 1,000 streams fit: no warning


def test_grpc_core_queues_a_whole_fleet_of_new_streams() -> None:
    # gRPC core cancels new streams beyond its backlog of streams the event loop has not taken
    # yet (1,000 soft, 3,000 hard, 30 s by default): a fleet reconnecting at once must fit
    from collector.config import CollectorConfig
    from collector.server import server_options

    options = dict(server_options(CollectorConfig.model_validate({"store": "x.db", "max_streams": 20_000})))
    assert options["grpc.server.max_pending_requests"] >= 20_000
    assert options["grpc.server.max_pending_requests_hard_limit"] >= 20_000
    assert options["grpc.server_max_unrequested_time_in_server"] >= 60
