"""The console inside the collector: opened from collector.yaml's `console:`, started and stopped
with the collector on its event loop (collector/server.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

from collector.config import Console
from collector.console import queries
from collector.console.errors import ConsoleError
from collector.console.web import ConsoleState, build_app
from collector.store import Store, StoreError, open_store

log = logging.getLogger("exfilguard.collector.console")


class ConsoleServer:
    """The console's HTTP(S) server on its own store connections: `start()`, then `stop()`."""

    def __init__(
        self, console: Console, store_location: str, state_dir: str, silent_after: float = 300.0
    ) -> None:
        self.console = console
        self.store_location = store_location
        self.state_dir = state_dir
        self.silent_after = silent_after
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.state: ConsoleState | None = None  # the running console's (tests reset its login limiter)
        self._stores: list[Store] = []

    def _ssl(self) -> ssl.SSLContext | None:
        tls = self.console.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConsoleError(tls.cert, f"cannot load the console's certificate and key: {exc}") from exc
        return context

    def _open(self) -> ConsoleState:
        writer = open_store(self.store_location)
        self._stores.append(writer)
        writer_state = ConsoleState(
            writer, writer, self.state_dir, self.console.tls is not None, self.silent_after
        )
        writer_state.prepare()
        queries.ensure_indexes(writer)
        reader = open_store(self.store_location, readonly=True)
        self._stores.append(reader)
        return ConsoleState(reader, writer, self.state_dir, self.console.tls is not None, self.silent_after)

    async def start(self) -> None:
        """Open the store connections, create the console's tables and indexes, and listen."""
        context = self._ssl()
        try:
            state = await asyncio.to_thread(self._open)
        except StoreError:
            await self._close_stores()
            raise
        # No access log: the path of a login link is a secret until it is used.
        self.state = state
        runner = web.AppRunner(build_app(state), access_log=None)
        await runner.setup()
        host, _, port = self.console.listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await self._close_stores()
            raise ConsoleError(self.console.listen, f"console cannot listen: {exc}") from exc
        self._runner = runner
        server = site._server  # the bound socket tells the port when the config asked for 0
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        scheme = "https" if context is not None else "http"
        log.info(
            f"console on {scheme}://{host}:{self.port}/", extra={"console_listen": f"{host}:{self.port}"}
        )

    async def stop(self) -> None:
        """Stop listening and close the store connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.state is not None:
            await self.state.flush_audit()  # the last views
        await self._close_stores()

    async def _close_stores(self) -> None:
        stores, self._stores = self._stores, []
        for store in stores:
            await asyncio.to_thread(store.close)
