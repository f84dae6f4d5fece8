"""The forward process: event forwarding runs in a process of its own, off the collector's.

Reading stored rows, turning each event into its format's JSON and sending it is CPU-bound
Python; as threads of the collector it held the GIL that gRPC, ingest and acks need. As a child
process (like the policy process) it runs on another core while the collector stores and acks.

    collector (event loop)                       forward process (python -m collector.forward.process)
      acker: batch committed
        -> ForwardProcess.on_stored()  ==stdin==>  a wake-up: every ForwardWorker looks now
      /metrics <- metric_families()   <==pipe==   every destination's figures, twice a second

Nothing but wake-ups crosses the pipe: each worker reads what was stored from the store (a
read-only connection of its own) after its cursors, and keeps them there. A wake-up is not sent
while the pipe still holds one, so ingest never waits on forwarding. A child that dies is
restarted within a second and resumes from the cursors in the store; when the collector dies,
the child's input ends and it stops, closing its connections (its leadership of `forward:NAME`
passes to another collector of the same PostgreSQL store).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client.core import Metric

from collector.child import ChildProcess, child_start, report
from collector.config import CollectorConfig
from collector.forward.formatted import default_helpers
from collector.forward.listener import Forwarding, build_destination, metric_families
from common import logs
from common.errors import ExfilGuardError
from protos import exfilguard_pb2 as pb

log = logging.getLogger("exfilguard.collector.forward")

WAKE = b"w"
REPORT_SECONDS = 0.5
_STOP_SECONDS = (
    10.0  # a delivery under way finishes or is given up (its cursor saved only if it went through)
)


class ForwardProcessError(ExfilGuardError):
    """The forward process could not start (an unreadable store...)."""


# ------------------------------------------------------------------ the collector's side


class ForwardProcess(ChildProcess):
    """The collector's event listener that runs `forward:` in a child process and wakes it."""

    module = "collector.forward.process"
    what = "forward process"
    stop_seconds = _STOP_SECONDS
    error = ForwardProcessError
    logger = log.name

    def __init__(self, config: CollectorConfig) -> None:
        super().__init__(config)
        self._figures: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        """Check every destination's secrets here (SinkSetupError at start), then start the child."""
        for spec in self.config.forward:
            build_destination(spec).close()
        await super().open()

    def first_input(self) -> bytes:
        """The config, one line."""
        return self.config.model_dump_json().encode() + b"\n"

    async def read_reports(self, reader: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        """Every destination's figures (the first says it runs), or why it cannot start."""
        while line := await reader.readline():
            body = json.loads(line)
            if "figures" in body:
                self._figures = body["figures"]
                if not ready.done():
                    ready.set_result(None)
            elif "failed" in body and not ready.done():
                ready.set_exception(ForwardProcessError(str(body["failed"])))

    def exited(self, code: int) -> None:
        """Say so: the new one resumes from the cursors in the store."""
        self.log.error(
            "forward process exited with %s; restarting it (it resumes from the cursors in the store)",
            code,
            extra={"exit_code": code},
        )

    async def on_stored(self, events: Sequence[pb.Event], data: Sequence[bytes] = ()) -> None:
        """Events were stored: wake the child, unless a wake-up is still on its way (never waits)."""
        process = self._process
        stdin = process.stdin if process is not None else None
        if stdin is None or stdin.is_closing():
            return
        transport: Any = stdin.transport
        if transport.get_write_buffer_size() == 0:
            with contextlib.suppress(ConnectionError):
                stdin.write(WAKE)

    async def on_events(self, mappings: list[dict[str, Any]]) -> None:
        """Collector-made events (agent.silent) are not stored, so not forwarded."""

    def figures(self) -> dict[str, dict[str, Any]]:
        """Every destination's figures (ForwardWorker.figures) as the child last reported them."""
        return self._figures

    def metric_families(self) -> list[Metric]:
        """Every destination's figures, as the child last reported them (at most REPORT_SECONDS old)."""
        return metric_families(self._figures)


# ------------------------------------------------------------------ the forward process itself


def _report(fd: int, body: dict[str, Any]) -> None:
    report(fd, json.dumps(body).encode() + b"\n")


def serve(report_fd: int) -> int:
    """Read the config, run the workers, wake them on each byte of input until it ends; the exit code."""
    from collector.store import StoreError, open_store
    from collector.store.sqlite import SqliteStore

    stdin = sys.stdin.buffer
    config = CollectorConfig.model_validate_json(stdin.readline())
    logs.configure(config.log_level)
    try:
        store = open_store(config.store)
    except StoreError as exc:  # names the store, never a password
        log.error("forward process cannot open the store: %s", exc)
        _report(report_fd, {"failed": f"forward process: {exc}"})
        return 1
    if isinstance(store, SqliteStore):
        store.relaxed_commits()  # cursor saves: never an fsync that the collector's commits queue behind
    try:
        forwarding = Forwarding.from_config(config, store, default_helpers())
    except (ExfilGuardError, StoreError) as exc:
        _report(report_fd, {"failed": f"forward process: {exc}"})
        store.close()
        return 1
    done = threading.Event()

    def report_forever() -> None:
        while True:
            _report(report_fd, {"figures": forwarding.figures()})
            if done.wait(REPORT_SECONDS):
                return

    reporter = threading.Thread(target=report_forever, name="forward-reports", daemon=True)
    reporter.start()
    try:
        while os.read(stdin.fileno(), 4096):  # each byte: events were stored
            forwarding.wake_all()
    finally:
        done.set()
        forwarding.close()
        store.close()
    return 0


def main() -> int:
    """Entry point of `python -m collector.forward.process` (started by the collector, not by admins)."""
    return serve(child_start("collector.forward.process", __doc__))


if __name__ == "__main__":
    sys.exit(main())
