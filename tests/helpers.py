"""Plain helpers for tests that run a real collector process and talk to it over real gRPC.

Typical use:

    config = write_collector_config(tmp_path)              # free port, store in tmp_path
    with start_collector(config) as collector:              # waits for health SERVING
        with AgentStream(collector.address, "agent-1") as stream:
            assert stream.ack() == 0                        # the ack that answers the hello
            stream.send_events(make_events("agent-1", 1, 100))
            assert stream.ack() == 100
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import events
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
INGEST_SERVICE = "exfilguard.v1.Ingest"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` (bounded) until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def write_collector_config(directory: Path, **overrides: Any) -> Path:
    """Write `directory/collector.yaml` for a loopback collector on a free port; keys can be overridden.

    Defaults: store `collector.db`, no policies, alerts to `alerts.jsonl`, all in `directory`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "tls": {"insecure_loopback": True},
        "store": str(directory / "collector.db"),
        "state_dir": str(directory),
        "policies": [],
        "alerts": [{"type": "jsonl", "path": str(directory / "alerts.jsonl")}],
        "log_level": "info",
    }
    doc.update(overrides)
    path = directory / "collector.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def health_status(address: str, service: str = "", timeout: float = 2.0) -> int | None:
    """The health service's status for `service`, or None when the collector does not answer."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
        status: int = reply.status
        return status


class CollectorProcess:
    """A collector running as its own OS process (`python -m collector.main`); logs go to a file."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.address = str(yaml.safe_load(config.read_text())["listen"])
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "collector.main"]), "--config", str(config)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        """The collector's process id."""
        return self.process.pid

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until health reports SERVING (fails early if the process exits)."""

        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"collector exited with {self.process.returncode}:\n{self.log()}")
            status = health_status(self.address, timeout=0.5)
            return status is not None and status == int(health_pb2.HealthCheckResponse.SERVING)

        wait_for(serving, timeout, f"collector at {self.address} to be SERVING")

    def log(self) -> str:
        """Everything the collector printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()

    def __enter__(self) -> CollectorProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def start_collector(
    config: Path,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> CollectorProcess:
    """Start a collector process on `config` and wait until healthy; it logs to `collector.log` beside it.

    `command` replaces `python -m collector.main` (it gets `--config FILE` appended).
    """
    collector = CollectorProcess(config, config.parent / "collector.log", env, command)
    try:
        collector.wait_healthy(timeout)
    except BaseException:
        collector.kill()
        raise
    return collector


class Held:
    """Takes stored events only once released, as a policy process whose pipe is full."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sequences: list[int] = []

    async def on_stored(self, stored: list[pb.Event], data: list[bytes]) -> None:
        await self.release.wait()
        self.sequences.extend(e.event.sequence for e in stored)

    async def on_events(self, mappings: list[dict[str, Any]]) -> None:
        """Not called: every event here is stored."""


def make_event(agent_id: str, sequence: int, action: str = "file.read", **fields: Any) -> pb.Event:
    """A realistic event of `agent_id` with `sequence` (fields as for `protos.events.new_event`)."""
    fields.setdefault("file", pb.File(path=f"/srv/db/table-{sequence}.csv", size=4096))
    fields.setdefault("user", pb.User(id="1000", name="alice"))
    fields.setdefault(
        "process", pb.Process(pid=4242, executable="/usr/bin/cp", command_line="cp -r /srv/db /media/usb")
    )
    event = events.new_event(action, **fields)
    event.agent.id = agent_id
    event.agent.version = "0.1.0"
    event.event.sequence = sequence
    event.exfilguard.attribution = "inferred"
    return event


def make_events(agent_id: str, first: int, last: int) -> list[pb.Event]:
    """Events with sequences first..last (inclusive)."""
    return [make_event(agent_id, s) for s in range(first, last + 1)]


class AgentStream:
    """A hand-driven agent stream over real gRPC: send messages, read acks, see how it ended."""

    def __init__(
        self,
        address: str,
        agent_id: str | None,
        *,
        hostname: str = "ws-test",
        version: str = "0.1.0",
        first: pb.AgentMessage | None = None,
        options: list[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,  # mTLS; None: plaintext
    ) -> None:
        self.agent_id = agent_id or ""
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options or [])
        else:
            self._channel = grpc.secure_channel(address, credentials, options=options or [])
        self._out: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        self._in: queue.Queue[pb.CollectorMessage | grpc.RpcError | None] = queue.Queue()
        self.error: grpc.RpcError | None = None
        stub = pb_grpc.IngestStub(self._channel)
        self._call = stub.Stream(iter(self._out.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if first is not None:
            self.send(first)
        elif agent_id is not None:
            self.send(pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, version=version, hostname=hostname)))

    def _read(self) -> None:
        try:
            for message in self._call:
                self._in.put(message)
            self._in.put(None)
        except grpc.RpcError as exc:
            self._in.put(exc)

    def send(self, message: pb.AgentMessage) -> None:
        """Queue one message for sending."""
        self._out.put(message)

    def send_events(self, batch: list[pb.Event]) -> None:
        """Send one batch."""
        self.send(pb.AgentMessage(batch=pb.EventBatch(events=batch)))

    def heartbeat(self, backlog: int = 0) -> None:
        """Send a heartbeat."""
        self.send(pb.AgentMessage(heartbeat=pb.Heartbeat(sent=events.now(), backlog=backlog)))

    def receive(self, timeout: float = 10.0) -> pb.CollectorMessage | None:
        """The next message from the collector; None at a clean end; raises the stream's RpcError."""
        item = self._in.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            self.error = item
            raise item
        return item

    def ack(self, timeout: float = 10.0) -> int:
        """The next acknowledged sequence (skips configuration messages)."""
        while True:
            message = self.receive(timeout)
            if message is None:
                raise EOFError("stream ended without an ack")
            if message.WhichOneof("body") == "ack":
                sequence: int = message.ack.sequence
                return sequence

    def status(self, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        """Wait for the stream to end with an error; (code, details)."""
        while True:
            try:
                if self.receive(timeout) is None:
                    raise AssertionError("stream ended cleanly, expected an error status")
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""

    def close(self) -> None:
        """Half-close and drop the channel."""
        self._out.put(None)
        with contextlib.suppress(Exception):
            self._call.cancel()
        self._channel.close()

    def __enter__(self) -> AgentStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `exfilguard` admin CLI as a process (`input` on its stdin); the completed process (text)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from admin import main; sys.exit(main())", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        input=input,
    )


def stored_sequences(store_path: Path, agent_id: str) -> list[int]:
    """Sequences stored for one agent, read straight from the SQLite store (read-only)."""
    return [int(m["event.sequence"]) for m in iter_stored(store_path, agent_id)]


def iter_stored(store_path: Path, agent_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Stored events (mappings with chain hashes) straight from the SQLite store."""
    from collector.store import EventFilter
    from collector.store.sqlite import SqliteStore

    store = SqliteStore(store_path, readonly=True)
    try:
        yield from store.events(EventFilter(agent=agent_id))
    finally:
        store.close()
