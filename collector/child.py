"""ChildProcess: a helper process of the collector (the policy process, the forward process).

    python -m MODULE --report-fd N     its first input is its config; it reports on fd N

The collector starts it, waits until it says it is ready (or why it cannot start), restarts it a
second after it dies, and stops it by closing its input (it then finishes what it was given and
exits; killed after `stop_seconds`). What goes down the pipe and what comes back is the
subclass's: `first_input()`, `read_reports()`, `exited()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from collector.config import CollectorConfig
from common import logs
from common.errors import ExfilGuardError

RESTART_SECONDS = 1.0


class ChildProcess:
    """Start, watch, restart and stop one helper process; subclasses speak its protocol."""

    module = ""  # python -m this
    what = ""  # its name in log lines: "policy process"
    stop_seconds = 30.0
    report_limit = 1 << 20  # the longest report the reader takes
    error: type[ExfilGuardError] = ExfilGuardError  # raised by open() when it cannot start
    logger = "exfilguard.collector"

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.log = logging.getLogger(self.logger)
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # ---------------------------------------------------------------- what subclasses say

    def first_input(self) -> bytes:
        """What the child reads first (its config: never argv or the environment, which others can read)."""
        raise NotImplementedError

    async def read_reports(self, reader: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        """Read the child's reports until they end; settle `ready` when it says it is (or cannot be)."""
        raise NotImplementedError

    def spawned(self, process: asyncio.subprocess.Process) -> None:
        """A child was started (before its first input is written)."""

    def exited(self, code: int) -> None:
        """The running child exited with `code` unasked (it is restarted after RESTART_SECONDS)."""
        self.log.error("%s exited with %s; restarting it", self.what, code, extra={"exit_code": code})

    # ---------------------------------------------------------------- life

    async def open(self) -> None:
        """Start the child; raises `error` if it exits or fails before it is ready."""
        await self._spawn()
        assert self._ready is not None
        try:
            await self._ready
        except self.error:
            await self._reap()
            raise
        self._tasks.append(asyncio.create_task(self._watch(), name=f"{self.what} watch"))

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, "--report-fd", str(write_fd),
                stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,),
            )  # fmt: skip
        finally:
            os.close(write_fd)
        process = self._process
        assert process.stdin is not None
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        # Retrieved here too: a restarted child that fails before it is ready has nobody awaiting it.
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.spawned(process)
        process.stdin.write(self.first_input())
        reader = asyncio.StreamReader(limit=self.report_limit)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        self._tasks.append(asyncio.create_task(self._reports(reader, ready), name=f"{self.what} reports"))
        self.log.info("%s started", self.what, extra={"pid": process.pid})

    async def _reports(self, reader: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        try:
            await self.read_reports(reader, ready)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the child is gone (or garbled its last words); _watch restarts it
        finally:
            if not ready.done():
                ready.set_exception(self.error(f"the {self.what} exited before it was ready"))

    async def _watch(self) -> None:
        while not self._closing:
            process = self._process
            assert process is not None
            code = await process.wait()
            if self._closing:
                return
            self.exited(code)
            await asyncio.sleep(RESTART_SECONDS)
            if self._closing:
                return
            self.restarts += 1
            with contextlib.suppress(OSError):
                await self._spawn()

    async def aclose(self) -> None:
        """End the child's input and wait for it to finish (killed after stop_seconds)."""
        self._closing = True
        await self._reap()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
            with contextlib.suppress(ConnectionError):
                await process.stdin.wait_closed()
        try:
            await asyncio.wait_for(process.wait(), self.stop_seconds)
        except TimeoutError:
            self.log.error("%s did not finish in %.0f s; killed", self.what, self.stop_seconds)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def report(fd: int, data: bytes) -> None:
    """The child's side: write one report whole (blocking: reports are small and rare)."""
    with contextlib.suppress(BrokenPipeError):  # the collector is gone: the input ends next
        while data:
            data = data[os.write(fd, data) :]


def child_start(module: str, description: str) -> int:
    """The child's side, first thing in its main(): its command line read, logging to stdout, Ctrl-C
    left to the collector (which stops it); the report fd returned."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--report-fd", type=int, required=True, help="pipe to the collector")
    args = parser.parse_args()
    logs.configure("info")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return int(args.report_fd)
