"""The sealer: extends every agent's hash chain over newly stored events, in a process of its own.

Hashing an event (ECS mapping, canonical JSON, SHA-256) is CPU-bound Python; in the
collector process it would hold the GIL that gRPC and ingest need. As a separate process
it runs on another core, and acks never wait for it. It runs at the collector's own priority
(it used to be niced, and then trailed a busy collector by seconds: an insider's last copies
would wait the longest for their proof), so the chain stays within moments of the acks while
the cores keep up; exports and verification only cover chained
events (see collector/store/sqlite.py). Killing it at any moment is safe: each step is one
compare-and-set transaction, and the next sealer continues where the chain ends.

    python -m collector.sealer --store PATH --parent PID

A PostgreSQL store URL may carry a password, and a command line is visible to every user
(`ps`), so the collector hands a URL over in the environment (EXFILGUARD_SEALER_STORE, readable
only by the same user and root) rather than as --store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from collector.store import StoreError, open_store
from collector.store.sqlite import SqliteStore
from common import logs

log = logging.getLogger("exfilguard.collector.sealer")

_STEP_EVENTS = 2_000  # per transaction: short write locks, steady progress
_IDLE_SECONDS = 0.05  # a look at the chains table when idle: cheap, and the lag it adds small
# ... and while ingest is busy (something was chained in the last second): a commit that waits
# for the chain (collector/ingest.py MAX_UNSEALED) should not wait for the sealer's nap.
_BUSY_LOOK_SECONDS = 0.01
_RESTART_SECONDS = 1.0
STORE_ENV = "EXFILGUARD_SEALER_STORE"


def run(location: str, parent: int) -> int:
    """Seal until the parent collector is gone or SIGTERM; the exit code."""
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the collector, which stops us
    try:
        store = open_store(location)
    except StoreError as exc:  # names the store, never a password; the collector restarts us
        log.error("sealer cannot open the store: %s", exc)
        return 1
    if isinstance(store, SqliteStore):
        # Chain values follow from the stored events: a power cut that undoes a step only means it
        # is done again, so no step holds the write lock through an fsync that ingest waits for.
        store.relaxed_commits()
    worked = 0.0  # when something was last chained
    try:
        while not stop and os.getppid() == parent:  # orphaned by kill -9: exit, the next collector seals
            try:
                done = store.seal(_STEP_EVENTS)
            except StoreError as exc:
                store.outage.failed(exc, "sealing")
                done = 0
                time.sleep(_RESTART_SECONDS)
            else:
                store.outage.succeeded()
            now = time.monotonic()
            if done:
                worked = now
            else:
                time.sleep(_BUSY_LOOK_SECONDS if now - worked < 1.0 else _IDLE_SECONDS)
    finally:
        store.close()
    return 0


class Sealer:
    """The collector's handle on its sealer process: started, kept running, stopped."""

    def __init__(self, location: str, log_level: str = "info") -> None:
        self.location = location
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None

    def _spawn(self) -> None:
        # The parent pid lets an orphan notice a kill -9 of the collector and exit.
        command = [sys.executable, "-m", "collector.sealer"]
        command += ["--parent", str(os.getpid()), "--log-level", self.log_level]
        env = None
        if "://" in self.location:
            env = os.environ | {STORE_ENV: self.location}  # not argv: a URL may carry a password
        else:
            command += ["--store", self.location]
        self.process = subprocess.Popen(command, env=env)
        log.info("sealer started", extra={"pid": self.process.pid})

    async def start(self) -> None:
        """Start the process and a watchdog that restarts it if it dies."""
        self._spawn()
        self._task = asyncio.create_task(self._watch(), name="sealer-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_RESTART_SECONDS)
            if self.process is not None and self.process.poll() is not None:
                log.error("sealer exited with %s; restarting", self.process.returncode)
                self._spawn()

    async def stop(self) -> None:
        """SIGTERM the process and wait for it (it finishes its current step)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    """Entry point of `python -m collector.sealer` (started by the collector, not by admins)."""
    parser = argparse.ArgumentParser(prog="python -m collector.sealer", description=__doc__)
    parser.add_argument("--store", help=f"the collector's store location (default: ${STORE_ENV})")
    parser.add_argument("--parent", type=int, required=True, help="collector pid; exit when it is gone")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    location = args.store or os.environ.get(STORE_ENV)
    if not location:
        parser.error(f"give --store or set {STORE_ENV}")
    logs.configure(args.log_level)
    return run(location, args.parent)


if __name__ == "__main__":
    sys.exit(main())
