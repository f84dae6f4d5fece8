"""The running collector: store writer, fleet registry and grpc.aio server, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector.config import CollectorConfig
from collector.fleet.config import ConfigPusher, FleetSource
from collector.fleet.enrollment import EnrollmentServeError, EnrollmentServer
from collector.fleet.enrollment import from_config as enrollment_from_config
from collector.fleet.grants import ActiveGrants
from collector.fleet.registry import FleetRegistry
from collector.ingest import INGEST_SERVICE, IngestServicer, StoreWriter, add_to_server
from collector.listeners import EventListener, notify
from collector.metrics import (
    CollectorMetrics,
    MetricsServer,
    Source,
    StoreFigures,
    config_reload_families,
    fleet_families,
    policy_source,
)
from collector.sealer import Sealer
from collector.store import Store, StoreError, presence
from collector.streamlimits import StreamLimits
from collector.tls.credentials import server_credentials, server_interceptors
from common.ecstime import ecs_now, ecs_time_at
from common.errors import ExfilGuardError
from common.records import from_attributes
from common.sdnotify import Notifier

if TYPE_CHECKING:
    from collector.console.service import ConsoleServer

log = logging.getLogger("exfilguard.collector")

_REGISTRY_FLUSH_SECONDS = 1.0
# Agent streams never end by themselves; the grace only lets in-flight batches get their ack.
# A batch cut off here is committed or not, and is resent by the agent either way.
_SHUTDOWN_GRACE_SECONDS = 1.0
_FINAL_SEAL_SECONDS = 20.0


class ServeError(ExfilGuardError):
    """The server could not start; carries the listen address."""

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        super().__init__(f"{address}: {message}")


_UNREQUESTED_SECONDS = 120  # a stream's wait for the event loop, in a burst of reconnections


def server_options(config: CollectorConfig) -> list[tuple[str, int]]:
    """gRPC channel arguments: message limits, keepalive, and an exclusive port."""
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Without this gRPC sets SO_REUSEPORT and a second collector would silently share the port.
        ("grpc.so_reuseport", 0),
        # Find dead agents' streams (laptop closed, cable pulled) within about a minute and a half.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # A connection with no call at all (a port scan, a client that never starts a stream)
        # is closed after two minutes; agents always have their stream open.
        ("grpc.max_connection_idle_ms", 120_000),
        # New streams wait in gRPC core until the event loop takes them, one at a time; core
        # cancels what waits beyond its backlog (1,000 soft, 3,000 hard) or 30 s. A fleet
        # reconnecting at once (a collector restart) is max_streams streams in that queue.
        ("grpc.server.max_pending_requests", config.max_streams + config.max_pending_hellos),
        ("grpc.server.max_pending_requests_hard_limit", config.max_streams + config.max_pending_hellos),
        ("grpc.server_max_unrequested_time_in_server", _UNREQUESTED_SECONDS),
    ]


def stream_limits(config: CollectorConfig) -> StreamLimits:
    """The stream limits of collector.yaml."""
    return from_attributes(StreamLimits, config)


class Collector:
    """One collector instance on an open store: `start()`, then `stop()`."""

    def __init__(
        self,
        config: CollectorConfig,
        store: Store,
        listeners: Sequence[EventListener] = (),
        fleet: FleetSource | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.listeners = list(listeners)
        # A fleet's collectors share the store: presence there names this one (store/presence.py).
        self.name = config.name or f"{socket.gethostname()}:{config.listen.rpartition(':')[2]}"
        self.registry = FleetRegistry(config.silent_agent_seconds, collector=self.name)
        self._started = time.monotonic()
        self.metrics = CollectorMetrics()  # its own registry: collectors in one process do not clash
        self._metrics_server: MetricsServer | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._writer: StoreWriter | None = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._enrollment: EnrollmentServer | None = None
        self.console: ConsoleServer | None = None
        if config.console is not None:  # aiohttp and the templates load only for a console
            from collector.console.service import ConsoleServer

            self.console = ConsoleServer(
                config.console, config.store, config.state_dir, config.silent_agent_seconds
            )
        # The config's value, not store.location: a PostgreSQL URL's password is left out of that.
        self._sealer = Sealer(config.store, config.log_level)
        # Central agent config: raises YamlError (file:line:key) for a broken fleet file.
        if fleet is None and config.agent_config:
            fleet = FleetSource(config.agent_config)
        # grants officers made are pushed with it, signed with the evidence key (collector/fleet/grants.py)
        self.grants = ActiveGrants(self._grant_key())
        self.pusher = ConfigPusher(fleet, self.grants)
        self._fleet_reload_requested = False

    async def start(self) -> None:
        """Open the registry, bind the port and start serving."""
        self.store.mark_all_disconnected(self.name)
        self._renew_lease(start=True)
        self._check_signing_identity()
        try:  # the grants in force before the first agent says hello
            self.grants.refresh(self.store.grants(active_at=ecs_now()))
        except StoreError as exc:
            log.warning("grants not read from the store: %s", exc)
        self._started = time.monotonic()
        self.registry.load(self.store.agents())
        self._writer = StoreWriter(
            self.store, seal_inline=False, metrics=self.metrics, listeners=self.listeners
        )
        await self._sealer.start()
        for listener in self.listeners:
            opening = getattr(listener, "open", None)  # the policy process: loaded and rebuilt before serving
            if opening is not None:
                await opening()
        servicer = IngestServicer(
            self._writer,
            self.registry,
            stream_limits(self.config),
            pusher=self.pusher,
            metrics=self.metrics,
        )
        server = grpc.aio.server(
            options=server_options(self.config),
            interceptors=server_interceptors(self.config.tls, self.metrics.stream_rejected),
        )
        add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        credentials = server_credentials(self.config.tls)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.config.listen)
            else:
                self.port = server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            raise ServeError(self.config.listen, f"cannot listen: {exc}") from exc
        if self.port == 0:
            raise ServeError(self.config.listen, "cannot listen (address in use or not available here)")
        await server.start()
        self._server = server
        try:
            self._enrollment = enrollment_from_config(self.config)
            if self._enrollment is not None:
                await self._enrollment.start()
        except EnrollmentServeError as exc:
            raise ServeError(exc.address, f"enrollment: {exc}") from exc
        self._serve_metrics(servicer)
        if self.console is not None:
            try:
                await self.console.start()
            except ExfilGuardError as exc:  # ConsoleError (port, certificate) or StoreError
                raise ServeError(self.console.console.listen, f"console: {exc}") from exc
        # What start-up made (modules, gRPC, the config, the registry) lives as long as the process:
        # frozen, the full collections that ingest's short-lived rows and messages bring about no
        # longer walk it (collections were 5% of the collector's CPU in bench.ingest, perf; frozen:
        # 2,600 instructions an event fewer of ingest's ~140,000 to parse, check and store, callgrind).
        gc.freeze()
        for service in ("", INGEST_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self._flush_registry_forever(), name="registry-flush"),
            asyncio.create_task(self._watch_silence_forever(), name="silence-watch"),
        ]
        if self.pusher is not None:
            self._tasks.append(asyncio.create_task(self._watch_fleet_forever(), name="fleet-config"))
            self._take_sighup()
        host = self.config.listen.rpartition(":")[0]
        log.info(
            f"collector listening on {host}:{self.port}",
            extra={"listen": f"{host}:{self.port}", "store": self.store.location},
        )

    async def stop(self) -> None:
        """Stop accepting, end the streams, commit what was received, mark every agent disconnected."""
        await self._health.enter_graceful_shutdown()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)
            self._metrics_server = None
        if self._enrollment is not None:
            await self._enrollment.stop()
        if self.console is not None:
            await self.console.stop()
        if self._server is not None:
            await self._server.stop(_SHUTDOWN_GRACE_SECONDS)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            await self._writer.close()
        for listener in self.listeners:
            closing = getattr(listener, "aclose", None)  # after the last stored batch was passed on
            if closing is not None:
                try:
                    await closing()
                except Exception:
                    log.exception("event listener %s failed to close", type(listener).__name__)
        await self._sealer.stop()
        await asyncio.to_thread(self._seal_remaining)
        try:
            self.store.update_agents(self.registry.pending_updates())
            self.store.mark_all_disconnected(self.name)
        except StoreError:
            log.exception("could not record the fleet state at shutdown")
        log.info("collector stopped")

    def _serve_metrics(self, servicer: IngestServicer) -> None:
        """Have the figures kept elsewhere read at each scrape; serve /metrics if `metrics_listen` is set."""
        writer = self._writer
        assert writer is not None
        store_figures = StoreFigures(lambda: writer.call(self._store_figures))
        sources: list[Source] = [
            lambda: fleet_families(self.registry.summary(), servicer.streams, servicer.pending),
            store_figures.families,
        ]
        for listener in self.listeners:
            stats = getattr(listener, "stats", None)  # the policy listener's figures
            if callable(stats):
                sources.append(policy_source(stats))
            families = getattr(listener, "metric_families", None)  # forwarding's
            if callable(families):
                sources.append(families)
        if self.pusher is not None and (fleet := self.pusher.source) is not None:
            sources.append(lambda: config_reload_families(fleet.reloads, fleet.failures))
        self.metrics.read_at_scrape(asyncio.get_running_loop(), *sources)
        address = self.config.metrics_listen
        if address is None:
            return
        try:
            self._metrics_server = MetricsServer(address, self.metrics.registry)
        except OSError as exc:
            raise ServeError(address, f"metrics: cannot listen: {exc}") from exc
        host = address.rpartition(":")[0]
        log.info(
            f"metrics on http://{host}:{self._metrics_server.port}/metrics",
            extra={"metrics_listen": f"{host}:{self._metrics_server.port}"},
        )

    def _store_figures(self) -> tuple[int, int, int | None]:
        """(agent.gap events, events reported lost, unsealed events) from the store (writer thread)."""
        agents = self.store.agents()
        return sum(a.gaps for a in agents), sum(a.lost for a in agents), self.store.unsealed()

    def _seal_remaining(self) -> None:
        """Chain what the sealer had not reached yet, so a clean stop leaves a complete chain.

        Bounded in time: a huge backlog is left to the next start's sealer rather than
        delaying the stop past systemd's timeout.
        """
        deadline = time.monotonic() + _FINAL_SEAL_SECONDS
        try:
            while time.monotonic() < deadline and self.store.seal(2_000):
                pass
        except StoreError:
            log.exception("final sealing failed; the next start continues it")

    def _renew_lease(self, start: bool = False) -> None:
        """Renew this collector's presence lease; clear flags left by collectors whose lease ran out."""
        now = time.time()
        expired = ecs_time_at(now - presence.LEASE_SECONDS)
        key = self._signing_fingerprint if start else ""
        cleared = self.store.renew_lease(
            self.name, self.config.listen, ecs_time_at(now), expired, start=start, signing_key=key
        )
        if cleared:
            log.warning("%d agents were on collectors gone without a clean stop: not connected now", cleared)

    def _grant_key(self) -> str:
        """The public half of the key grants are signed with (the evidence key), base64; '' if none."""
        from collector.evidence import keys
        from collector.evidence.errors import EvidenceError

        try:
            return keys.public_key(self.config.state_dir).b64()
        except (EvidenceError, OSError) as exc:
            log.error("prevention exceptions are not pushed: no signing key: %s", exc)
            return ""

    @property
    def _signing_fingerprint(self) -> str:
        """Fingerprint of the key exports are signed with here ('' when there is none yet)."""
        from collector.evidence import keys
        from collector.evidence.errors import EvidenceError

        path = keys.key_dir(self.config.state_dir) / keys.KEY_FILE
        try:
            return keys.PublicKey.load(path).fingerprint() if path.exists() else ""
        except EvidenceError:
            return ""

    def _check_signing_identity(self) -> None:
        """A fleet signs with one key: say so loudly when a live collector of the fleet uses another."""
        mine = self._signing_fingerprint
        live = ecs_time_at(time.time() - presence.LEASE_SECONDS)
        for other in self.store.fleet_collectors():
            if other.name != self.name and other.seen >= live and other.signing_key not in ("", mine):
                log.error(
                    "collector %s signs exports with key %s, this one with %s: exports then verify only "
                    "against the key of the collector that made them; copy one collector's "
                    "evidence/signing.key to every collector's state_dir (docs/deploy.md)",
                    other.name, other.signing_key[:16], mine[:16], extra={"collector": other.name},
                )

    async def _flush_registry_forever(self) -> None:
        assert self._writer is not None
        while True:
            await asyncio.sleep(_REGISTRY_FLUSH_SECONDS)
            updates = self.registry.pending_updates()
            try:
                if updates:
                    await self._writer.call(self.store.update_agents, updates)
                await self._writer.call(self._renew_lease)
            except StoreError as exc:
                self.store.outage.failed(exc, "fleet registry update")
            else:
                self.store.outage.succeeded()

    def _take_sighup(self) -> None:
        """SIGHUP reloads the fleet file, and still reaches every listener that reloads on it (policies).

        asyncio keeps one handler per signal, so this one calls theirs.
        """
        reloaders = [r for r in (getattr(x, "request_reload", None) for x in self.listeners) if callable(r)]

        def on_sighup() -> None:
            self._fleet_reload_requested = True
            for request_reload in reloaders:
                request_reload()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)

    async def _watch_fleet_forever(self) -> None:
        assert self.pusher is not None
        seconds = self.config.agent_config_reload_seconds
        interval = min(1.0, seconds) if seconds > 0 else 1.0
        while True:
            await asyncio.sleep(interval)
            source = self.pusher.source
            changed: bool | None = None
            if source is not None and self._fleet_reload_requested:
                self._fleet_reload_requested = False
                changed = source.reload()
            elif source is not None and seconds > 0:
                changed = source.check()
            if await self._refresh_grants():
                changed = True
            if changed:
                sent = await self.pusher.push_changed()
                log.info(f"fleet config: pushed to {sent} connected agents", extra={"pushed": sent})

    async def _refresh_grants(self) -> bool:
        """Read the active grants from the store; True when a host's changed (granted, revoked, expired)."""
        assert self._writer is not None
        try:
            active = await self._writer.call(functools.partial(self.store.grants, active_at=ecs_now()))
        except StoreError as exc:
            self.store.outage.failed(exc, "reading grants")
            return False
        self.store.outage.succeeded()
        return self.grants.refresh(active)

    async def _watch_silence_forever(self) -> None:
        assert self._writer is not None
        silent_after = self.config.silent_agent_seconds
        interval = max(0.2, min(silent_after / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._started < silent_after:
                continue  # after a start, agents get silent_after to find a collector again
            now = time.time()
            try:
                claimed = await self._writer.call(
                    self.store.claim_silent, ecs_time_at(now - silent_after), ecs_time_at(now)
                )
            except StoreError as exc:
                self.store.outage.failed(exc, "checking the fleet for silent agents")
                continue
            self.store.outage.succeeded()
            # The store hears from every collector of the fleet; each silent agent is claimed by one.
            silent = [self.registry.silent_event(a.id, a.version, a.host, a.collector) for a in claimed]
            self.metrics.silent_reported.inc(len(silent))
            for event in silent:
                log.warning(
                    "agent silent",
                    extra={"agent_id": event["agent.id"], "host": event["host.name"]},
                )
            await notify(self.listeners, silent)


async def serve(
    config: CollectorConfig,
    store: Store,
    stop: asyncio.Event,
    listeners: Sequence[EventListener] = (),
    fleet: FleetSource | None = None,
) -> None:
    """Run a collector until `stop` is set."""
    collector = Collector(config, store, listeners, fleet)
    notifier = Notifier.from_environment()  # Type=notify: READY, WATCHDOG from this loop, STOPPING
    watchdog: asyncio.Task[None] | None = None
    try:
        await collector.start()
        notifier.ready(status=f"serving agents on {config.listen}")
        watchdog = asyncio.create_task(notifier.watchdog_task(), name="sd-watchdog")
        await stop.wait()
    finally:
        notifier.stopping()
        if watchdog is not None:
            watchdog.cancel()
        await collector.stop()
