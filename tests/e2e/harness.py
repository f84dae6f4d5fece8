"""Real agent and collector processes for the pipeline tests: configs, start, kill -9, bounded waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from protos import exfilguard_pb2 as pb

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition",
             diagnose: Callable[[], str] | None = None) -> None:
    """Poll `predicate` (every 50 ms) until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    """A daemon started as its own OS process, its output kept in a log file."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Process:
        """Start the process (output appended to the log file)."""
        self._log = self.log_path.open("ab")
        env = os.environ | {"PYTHONUNBUFFERED": "1"} | self.env
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no flush, like a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_log()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def stop_quietly(self) -> None:
        """Teardown: make sure the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._close_log()

    def log_text(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Pipeline:
    """One collector and one agent in a temporary directory, as separate processes."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.collector_dir = base / "collector"
        self.agent_dir = base / "agent"
        self.collector_dir.mkdir()
        self.agent_dir.mkdir()
        self.store_path = self.collector_dir / "collector.db"
        self.store = str(self.store_path)  # the config's `store`: this path, or a postgresql:// URL
        self.collector_config = self.collector_dir / "collector.yaml"
        self.agent_config = self.agent_dir / "agent.yaml"
        self.processes: list[Process] = []
        self.collector: Process | None = None
        self.agent: Process | None = None
        self.write_collector_config()
        self.write_agent_config()

    # ------------------------------------------------------------ configs

    def write_collector_config(self) -> None:
        """A collector.yaml for loopback plaintext, SQLite store, no policies, alerts to a file."""
        policies = self.collector_dir / "policies"
        policies.mkdir(exist_ok=True)
        self.collector_config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            "tls:\n  insecure_loopback: true\n"
            f"store: '{self.store}'\n"
            f"state_dir: {self.collector_dir / 'state'}\n"
            f"policies: [{policies}]\n"
            "alerts:\n"
            f"  - type: jsonl\n    path: {self.collector_dir / 'alerts.jsonl'}\n"
        )

    def write_agent_config(self, **spool: int) -> None:
        """An agent.yaml pointing at this pipeline's collector, with fast heartbeats and backoff."""
        lines = [
            f"collector: 127.0.0.1:{self.port}",
            "tls:\n  insecure_loopback: true",
            "state_dir: state",
            "heartbeat_seconds: 0.5",
            "reconnect_max_seconds: 1",
            "batch:\n  max_events: 500\n  max_delay_ms: 50",
        ]
        if spool:
            lines.append("spool:\n" + "".join(f"  {k}: {v}\n" for k, v in spool.items()).rstrip())
        self.agent_config.write_text("\n".join(lines) + "\n")

    @property
    def agent_state(self) -> Path:
        """The agent's state_dir (relative paths in agent.yaml are relative to the file)."""
        return self.agent_dir / "state"

    # ------------------------------------------------------------ processes

    def start_collector(self) -> Process:
        """Start `exfilguard-collector --config` and wait until it accepts connections."""
        argv = [str(VENV_BIN / "exfilguard-collector"), "--config", str(self.collector_config)]
        process = Process(argv, self.collector_dir / "collector.log").start()
        self.processes.append(process)
        self.collector = process
        wait_for(lambda: port_open(self.port) or not process.alive, 30, "collector to listen")
        assert process.alive, f"collector exited:\n{process.log_text()}"
        return process

    def start_agent(self, test_events: int = 0, sensors: bool = False) -> Process:
        """Start `exfilguard-agent --config [--emit-test-events N]`, by default with `--no-sensors`.

        Without sensors the event stream is exactly agent.start, the test events, agent.stop
        (and agent.gap), so counts can be checked to the event.
        """
        argv = [str(VENV_BIN / "exfilguard-agent"), "--config", str(self.agent_config)]
        if not sensors:
            argv.append("--no-sensors")
        if test_events:
            argv += ["--emit-test-events", str(test_events)]
        process = Process(argv, self.agent_dir / "agent.log").start()
        self.processes.append(process)
        self.agent = process
        return process

    def close(self) -> None:
        """Kill whatever still runs."""
        for process in self.processes:
            process.stop_quietly()

    # ------------------------------------------------------------ observations

    def spool_rows(self) -> int:
        """Events in the agent's on-disk spool, read with a separate read-only connection."""
        path = self.agent_state / "spool.db"
        if not path.exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # not created yet

    def spool_actions(self) -> Counter[str]:
        """event.action counts of the events in the agent's spool (read-only connection)."""
        path = self.agent_state / "spool.db"
        if not path.exists():
            return Counter()
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
                blobs = [row[0] for row in conn.execute("SELECT data FROM events")]
        except sqlite3.OperationalError:
            return Counter()
        return Counter(pb.Event.FromString(blob).event.action for blob in blobs)

    def spool_meta(self) -> dict[str, str]:
        """The spool's persisted counters (next_sequence, acked_sequence, losses)."""
        path = self.agent_state / "spool.db"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
                return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            return {}  # not created yet

    def agent_id(self) -> str:
        """The persisted agent id."""
        return (self.agent_state / "agent-id").read_text().strip()

    def delivered(self) -> list[dict[str, Any]]:
        """Every event in the collector's store, as ECS mappings in (agent, sequence) order."""
        from collector.store import open_store

        store = open_store(self.store, readonly=True)
        try:
            return list(store.events())
        finally:
            store.close()

    def delivered_count(self) -> int:
        """How many events the collector's store holds (cheap enough to poll)."""
        from collector.store import open_store

        store = open_store(self.store, readonly=True)
        try:
            return store.count_events()
        finally:
            store.close()

    def agents_json(self) -> list[dict[str, Any]]:
        """`exfilguard agents --json` against this collector's config."""
        out = subprocess.run(
            [str(VENV_BIN / "exfilguard"), "agents", "--json", "--config", str(self.collector_config)],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
        )
        data = json.loads(out.stdout)
        return list(data["agents"] if isinstance(data, dict) else data)

    def diagnose(self) -> str:
        """Logs of both processes, for a failing wait."""
        parts = []
        for process in self.processes[-4:]:
            parts.append(f"--- {' '.join(process.argv[-3:])}\n{process.log_text()[-3000:]}")
        return "\n".join(parts)


def actions(events: list[dict[str, Any]]) -> list[str]:
    """event.action of each event."""
    return [str(e.get("event.action")) for e in events]


def by_action(events: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    """The events with this action."""
    return [e for e in events if e.get("event.action") == action]


def iter_test_numbers(events: list[dict[str, Any]]) -> Iterator[int]:
    """exfilguard.count of each agent.test event (1..N as produced)."""
    for e in by_action(events, "agent.test"):
        yield int(e.get("exfilguard.count", 0))
