"""Several real collector processes on one PostgreSQL database, and agents listing them all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.e2e.harness import REPO, VENV_BIN, Process, free_port, port_open, wait_for


class Fleet:
    """Collectors `0..n-1` sharing the store `store` (a postgresql:// URL), each in its own directory."""

    def __init__(
        self, base: Path, store: str, collectors: int = 2, policies: Sequence[Path] = (), alerts: str = "",
        **keys: Any,
    ) -> None:
        """`alerts`: the collectors' `alerts:` list as YAML (default: a JSONL file each, see `alerts()`)."""
        self.base = base
        self.store = store
        self.ports = [free_port() for _ in range(collectors)]
        self.processes: list[Process] = []
        self.collectors: list[Process | None] = [None] * collectors
        self.agents: list[Process] = []
        extra = "".join(f"{key}: {value}\n" for key, value in keys.items())
        for index, port in enumerate(self.ports):
            directory = self.dir(index)
            (directory / "policies").mkdir(parents=True)
            for policy in policies:
                shutil.copy(policy, directory / "policies" / policy.name)
            (directory / "collector.yaml").write_text(
                f"listen: 127.0.0.1:{port}\n"
                "tls:\n  insecure_loopback: true\n"
                f"store: '{store}'\n"
                f"state_dir: {directory / 'state'}\n"
                f"policies: [{directory / 'policies'}]\n"
                "alerts:\n" + (alerts or f"  - type: jsonl\n    path: {directory / 'alerts.jsonl'}\n") + extra
            )

    def dir(self, index: int) -> Path:
        """Collector `index`'s directory (config, log, state, alerts)."""
        return self.base / f"collector-{index}"

    def address(self, index: int) -> str:
        """host:port of collector `index`."""
        return f"127.0.0.1:{self.ports[index]}"

    def start_collector(self, index: int) -> Process:
        """Start collector `index` and wait until it listens."""
        (process,) = self.start_collectors(index)
        return process

    def start_collectors(self, *indexes: int) -> list[Process]:
        """Start the collectors of `indexes` all at once, then wait until each listens."""
        started = []
        for index in indexes:
            config = str(self.dir(index) / "collector.yaml")
            argv = [str(VENV_BIN / "exfilguard-collector"), "--config", config]
            process = Process(argv, self.dir(index) / "collector.log").start()
            self.processes.append(process)
            self.collectors[index] = process
            started.append(process)
        for index, process in zip(indexes, started, strict=True):
            port = self.ports[index]
            wait_for(lambda: port_open(port) or not process.alive, 30, f"collector {index} to listen")  # noqa: B023
            assert process.alive, process.log_text()
        return started

    def share_signing_key(self, source: int, target: int) -> None:
        """Give collector `target` collector `source`'s signing key, as docs/deploy.md says to."""
        keys = self.dir(target) / "state" / "evidence"
        keys.mkdir(mode=0o700, parents=True)
        for name, mode in (("signing.key", 0o600), ("signing.pub", 0o644)):
            shutil.copy(self.dir(source) / "state" / "evidence" / name, keys / name)
            (keys / name).chmod(mode)

    def collector(self, index: int) -> Process:
        """The running process of collector `index`."""
        process = self.collectors[index]
        assert process is not None
        return process

    def start_agent(
        self, name: str, test_events: int = 0, failback_seconds: float = 1.0, order: Sequence[int] = ()
    ) -> Process:
        """An agent listing every collector (or those of `order`, in that order), with fast heartbeats,
        backoff and failback."""
        directory = self.base / name
        directory.mkdir()
        order = order or range(len(self.ports))
        listed = "".join(f"\n  - {self.address(i)}" for i in order)
        (directory / "agent.yaml").write_text(
            f"collector:{listed}\n"
            "tls:\n  insecure_loopback: true\n"
            "state_dir: state\n"
            "heartbeat_seconds: 0.5\n"
            "reconnect_max_seconds: 1\n"
            f"failback_seconds: {failback_seconds}\n"
            "batch:\n  max_events: 500\n  max_delay_ms: 50\n"
        )
        argv = [str(VENV_BIN / "exfilguard-agent"), "--config", str(directory / "agent.yaml"), "--no-sensors"]
        if test_events:
            argv += ["--emit-test-events", str(test_events)]
        process = Process(argv, directory / "agent.log").start()
        self.processes.append(process)
        self.agents.append(process)
        return process

    def agent_id(self, name: str) -> str:
        """The persisted id of agent `name`."""
        path = self.base / name / "state" / "agent-id"
        wait_for(path.exists, 30, f"agent {name}'s id")
        return path.read_text().strip()

    def stored(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Events in the shared store (optionally one agent's), in (agent, sequence) order."""
        from collector.store import EventFilter, open_store

        store = open_store(self.store, readonly=True)
        try:
            return list(store.events(EventFilter(agent=agent_id)))
        finally:
            store.close()

    def presence(self) -> dict[str, tuple[bool, str]]:
        """(connected, collector) of each agent, read from the shared store."""
        from collector.store import open_store

        store = open_store(self.store, readonly=True)
        try:
            return {a.id: (a.connected, a.collector) for a in store.agents()}
        finally:
            store.close()

    def stored_count(self) -> int:
        """How many events the shared store holds."""
        from collector.store import open_store

        store = open_store(self.store, readonly=True)
        try:
            return store.count_events()
        finally:
            store.close()

    def alerts(self, policy: str) -> list[dict[str, Any]]:
        """Alerts of `policy` in every collector's JSONL sink."""
        found = []
        for index in range(len(self.ports)):
            path = self.dir(index) / "alerts.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            found += [a for a in map(json.loads, lines) if a.get("policy.id") == policy]
        return found

    def registry(self, index: int = 0) -> list[dict[str, Any]]:
        """`exfilguard agents --json` against collector `index`'s config."""
        config = str(self.dir(index) / "collector.yaml")
        out = subprocess.run(
            [str(VENV_BIN / "exfilguard"), "agents", "--json", "--config", config],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
        )  # fmt: skip
        data = json.loads(out.stdout)
        return list(data["agents"] if isinstance(data, dict) else data)

    def stored_alerts(self, policy: str) -> list[dict[str, Any]]:
        """Alerts of `policy` in the shared store."""
        from collector.store import AlertFilter, open_store

        store = open_store(self.store, readonly=True)
        try:
            return [dict(a) for a in store.alerts(limit=1000, where=AlertFilter(policies=[policy]))]
        finally:
            store.close()

    def evaluated(self, agents: int) -> bool:
        """True when the fleet's policy evaluator has evaluated every stored event of `agents` agents."""
        import psycopg

        from collector.store.policylog import PolicyLog

        try:
            with psycopg.connect(self.store, connect_timeout=5) as conn:
                return PolicyLog.caught_up(conn) == agents
        except psycopg.Error:
            return False  # the server is down

    def leader(self) -> int | None:
        """The running collector whose policy process leads the evaluation, if one does."""
        for index, process in enumerate(self.collectors):
            if process is None or not process.alive:
                continue
            text = process.log_text()
            if text.count("this collector leads") > text.count("lost its session"):
                return index
        return None

    def crash(self, index: int) -> None:
        """SIGKILL collector `index` and its own processes (policy process, sealer), as a host crash."""
        process = self.collector(index)
        assert process.proc is not None
        pid = process.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        process.kill9()

    def diagnose(self) -> str:
        """The tail of every process's log, for a failing wait."""
        return "\n".join(f"--- {p.log_path}\n{p.log_text()[-2500:]}" for p in self.processes)

    def close(self) -> None:
        """Kill whatever still runs."""
        for process in self.processes:
            process.stop_quietly()


def exactly_once(events: list[dict[str, Any]]) -> bool:
    """Sequences 1..n without a hole and no event id twice."""
    sequences = [int(e["event.sequence"]) for e in events]
    ids = Counter(str(e["event.id"]) for e in events)
    return sequences == list(range(1, len(sequences) + 1)) and all(n == 1 for n in ids.values())


class StreamingAgent:
    """An agent in this process (the real Spool and Transport) that emits what a test needs, when it
    needs it, to the collectors of `order`."""

    def __init__(self, fleet: Fleet, name: str, order: Sequence[int]) -> None:
        from agent.identity import Identity
        from agent.spool import Spool
        from agent.transport import Transport
        from common.agentconfig import AgentConfig

        self.host = name
        identity = Identity(agent_id=f"5e0c7f2e-95d4-4a8e-9d7a-{name:>12}".replace(" ", "0"), hostname=name,
                            machine_id=name)  # fmt: skip
        self.agent_id = identity.agent_id
        config = AgentConfig.model_validate({
            "collector": [fleet.address(i) for i in order], "state_dir": str(fleet.base / name),
            "heartbeat_seconds": 0.5, "reconnect_max_seconds": 1, "failback_seconds": 60,
            "batch": {"max_events": 200, "max_delay_ms": 20},
        })  # fmt: skip
        self.spool = Spool(config.state_dir, agent_id=identity.agent_id, version="1.0", max_events=100_000,
                           max_bytes=64 << 20)  # fmt: skip
        self.transport = Transport(config, self.spool, identity, version="1.0")
        self.transport.start()
        self.emitted = 0

    def copies(self, user: str, count: int, action: str = "file.copy") -> None:
        """`count` file.copy (or `action`) events by `user` on this host."""
        from protos import events
        from protos import exfilguard_pb2 as pb

        for n in range(count):
            self.spool.append(events.new_event(
                action, host=pb.Host(name=self.host), user=pb.User(name=user),
                file=pb.File(path=f"/home/{user}/doc-{self.emitted + n}.txt"),
            ))  # fmt: skip
        self.emitted += count

    def acked(self) -> bool:
        """True when the collectors acknowledged everything emitted."""
        return self.spool.acked_sequence >= self.emitted

    def stop(self) -> None:
        """Stop streaming and close the spool."""
        self.transport.stop(1)
        self.spool.close()
