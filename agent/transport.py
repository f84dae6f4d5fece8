"""The stream to the collector: hello, ordered event batches from the spool, heartbeats, acks down.

Why grpc.aio in one thread of its own: one bidirectional stream needs a reader (acks,
config), a writer (batches) and a timer (heartbeats, batch linger) at once. asyncio gives
all three on one thread with clean cancellation and timeouts, where sync gRPC needs a
request-iterator thread plus a response thread plus hand-made wake-ups. Sensors live on
their own threads, so the transport gets its own event loop; the spool wakes it with
`call_soon_threadsafe`.

Failover: `collector:` may list several collectors (of one fleet, sharing one PostgreSQL store).
The agent streams to the first that answers, in order; when a stream fails it tries the next at
once (jittered), and backs off exponentially only after a whole round of the list failed. On a
later collector it checks the earlier ones' health every `failback_seconds` (jittered) and goes
back to the first one serving. The new collector answers the hello with the watermark the shared
store holds, so the agent resends exactly what is not stored: nothing lost, nothing twice.

Delivery: the spool is the only source of truth. On every (re)connect the agent sends
Hello with what it believes is acknowledged, and sends every stored event after that,
in sequence order; the collector's Ack (highest contiguous sequence stored) deletes them
from the spool. Ingest is idempotent on (agent id, sequence), so resending after a
broken stream never duplicates. A window bounds how far sending may run ahead of acks.

Errors:
    TransportError            base class
    TransportConfigError      the transport cannot be set up as configured (carries `key`)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from agent import enroll
from agent.failover import first_serving
from agent.identity import Identity, load_or_create
from agent.refused import RefusedEvents
from agent.spool import Spool
from common.agentconfig import AgentConfig
from common.errors import ExfilGuardError
from protos import events
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from protos.wire import REFUSED_SEQUENCE_KEY

log = logging.getLogger("exfilguard.agent.transport")

# Per-event framing inside EventBatch (tag + length varint) and the envelope of a message:
# generous, so a batch cut by our arithmetic is always under the channel's limit.
_EVENT_OVERHEAD = 8
_ENVELOPE_BYTES = 1024
_BACKOFF_BASE_SECONDS = 0.25
_WINDOW_BATCHES = 8  # how many batches may be unacknowledged on the wire
_MIN_BATCH_BYTES = 16 << 10
_LOG_REPEAT_SECONDS = 60.0
_HEALTHY_SECONDS = 10.0  # a stream that lasted this long resets the backoff (a flapping one does not)


_Call = grpc.aio.StreamStreamCall[pb.AgentMessage, pb.CollectorMessage]


class TransportError(ExfilGuardError):
    """Base of the transport's errors."""


class TransportConfigError(TransportError):
    """The configured transport is not allowed or not possible; `key` names the config key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


def is_loopback(address: str) -> bool:
    """True when `host:port` names this machine (a loopback IP literal or `localhost`)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere later: never plaintext to it


def channel_credentials(config: AgentConfig, address: str | None = None) -> grpc.ChannelCredentials | None:
    """Credentials for the collector channel; None means plaintext (only on loopback, only when asked).

    Otherwise mTLS (agent/enroll.py): tls.cert/tls.key, or the enrolled pair in state_dir,
    enrolling first with tls.enrollment_token (at `address`, default the first collector) when
    there is none. One fleet CA signs every collector, so the pair serves for all of them. Raises
    enroll.EnrollUnreachable when enrollment is needed but the collector cannot be reached.
    """
    if config.tls.insecure_loopback:
        for collector in config.collectors:
            if not is_loopback(collector):
                raise TransportConfigError(
                    "tls.insecure_loopback",
                    f"plaintext is allowed only to a loopback collector, not {collector}; "
                    "configure tls.ca/cert/key instead",
                )
        return None
    tls = config.tls
    assert tls.ca  # AgentTls validation demands it without insecure_loopback
    try:
        return enroll.client_credentials(
            ca=tls.ca, cert=tls.cert, key=tls.key, state_dir=config.state_dir,
            agent_id=load_or_create(config.state_dir).agent_id, token=tls.enrollment_token,
            enroll_at=enroll.enroll_address(address or config.collectors[0], tls.enroll_address),
        )
    except enroll.CredentialsError as exc:
        raise TransportConfigError(f"tls.{exc.key}", exc.detail) from exc
    except (enroll.EnrollRefused, enroll.EnrollAnswerError, enroll.EnrollFileError) as exc:
        raise TransportConfigError("tls.enrollment_token", str(exc)) from exc


def channel_options(config: AgentConfig) -> list[tuple[str, int]]:
    """gRPC channel options: message size limits from config; gRPC's own reconnect is ours now."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # A fresh channel per attempt; keep gRPC from adding its own (up to 120 s) backoff on top.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", int(config.reconnect_max_seconds * 1000)),
        # Notice a vanished collector (host down, cable pulled) in ~40 s instead of TCP's ~15 min;
        # the collector permits pings every 10 s.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def backoff_delay(attempt: int, cap: float) -> float:
    """Jittered exponential backoff: half fixed, half random, so a fleet does not reconnect in step."""
    ceiling: float = min(cap, _BACKOFF_BASE_SECONDS * float(2 ** min(attempt, 30)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def split_batches(rows: Sequence[tuple[int, bytes]], max_bytes: int) -> list[list[tuple[int, bytes]]]:
    """Cut rows into consecutive runs whose encoded EventBatch stays under `max_bytes`."""
    budget = max_bytes - _ENVELOPE_BYTES
    batches: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    used = 0
    for row in rows:
        cost = len(row[1]) + _EVENT_OVERHEAD
        if current and used + cost > budget:
            batches.append(current)
            current, used = [], 0
        current.append(row)
        used += cost
    if current:
        batches.append(current)
    return batches


@dataclass
class TransportStats:
    """What the transport has done, for logs, heartbeats and tests."""

    connects: int = 0
    disconnects: int = 0
    batches_sent: int = 0
    events_sent: int = 0
    last_ack: int = 0
    failovers: int = 0  # moves to another collector after a failure
    failbacks: int = 0  # moves back to an earlier collector that serves again
    refused: int = 0  # events the collector refused, set aside with an agent.gap


class Transport:
    """Streams the spool to the collector over one long-lived gRPC stream, reconnecting as needed."""

    def __init__(
        self,
        config: AgentConfig,
        spool: Spool,
        identity: Identity,
        *,
        version: str,
        capabilities: Sequence[str] = (),
        on_config: Callable[[pb.AgentConfig], None] | None = None,
        config_version: str = "",
    ) -> None:
        self._config = config
        # Refuse a bad setup before starting; an agent that still has to enroll while the
        # collector is down starts anyway (spooling) and enrolls on a later connect.
        self._enroll_pending = False
        try:
            self._credentials = channel_credentials(config)
        except enroll.EnrollUnreachable as exc:
            log.warning("cannot enroll yet, will retry: %s", exc)
            self._credentials, self._enroll_pending = None, True
        self._spool = spool
        self._identity = identity
        self._version = version
        self.capabilities = list(capabilities)  # sent in every Hello; main adds the running sensors
        self._on_config = on_config
        self.config_version = config_version
        self.stats = TransportStats()
        self.batch_bytes = config.max_message_bytes  # lowered if the collector's limit is smaller
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._thread_main, name="transport", daemon=True)
        self._wakeup = asyncio.Event()  # new events spooled, or an ack opened the window
        self._beat_now = asyncio.Event()  # the running config changed: tell the collector now
        self._stopping = False
        self._draining = False
        self._connected = False
        self._connected_once = False  # this session got an answer: reset the backoff
        self._last_failure: str | None = None  # status code of the last failure logged
        self._last_logged = 0.0
        self._suppressed = 0
        self._outage_logged = False
        self._session_started = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._refused = RefusedEvents(config.state_dir)
        self._index = 0  # which of config.collectors the transport streams to (or tries next)
        self._misses = 0  # sessions failed in a row, over all collectors
        self._failback_to: int | None = None  # set by a session that found an earlier collector serving
        spool.add_listener(self._notify)

    # ------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True while a stream is open and the collector has answered on it."""
        return self._connected

    @property
    def collector(self) -> str:
        """The collector address streamed to now (or tried next)."""
        collectors = self._config.collectors
        return collectors[self._index % len(collectors)]

    def start(self) -> None:
        """Start streaming in the background; returns at once."""
        self._thread.start()

    def stop(self, drain_seconds: float = 2.0) -> None:
        """Send what is spooled and wait for its ack for up to `drain_seconds`, then close the stream."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(drain_seconds), self._loop)
        with contextlib.suppress(Exception):
            future.result(drain_seconds + 5)
        self._thread.join(5)

    def reconfigure(self, config: AgentConfig, config_version: str) -> None:
        """Run with new settings (heartbeat, batch) and report `config_version` in a heartbeat now.

        The collector address and TLS are never pushed, so the channel stays as it is.
        """
        self._config = config
        self.config_version = config_version
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                self._loop.call_soon_threadsafe(self._beat_now.set)

    # ------------------------------------------------------------ loop thread

    def _notify(self) -> None:
        # Called from the spool's writer thread.
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                self._loop.call_soon_threadsafe(self._wakeup.set)

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = self._loop.create_task(self._run())
        try:
            self._loop.run_until_complete(self._runner)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _shutdown(self, drain_seconds: float) -> None:
        self._draining = True
        self._wakeup.set()
        deadline = time.monotonic() + drain_seconds
        while self._connected and time.monotonic() < deadline:
            if self._spool.acked_sequence >= self._spool.next_sequence - 1:
                break
            await asyncio.sleep(0.02)  # bounded wait for the final ack; the stream is still live
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._session()
                if self._failback_to is not None:
                    self._fail_back(self._failback_to)
                    continue
                self._disconnected("UNAVAILABLE", "collector closed the stream")
            except grpc.aio.AioRpcError as exc:
                self._disconnected(exc.code().name, exc.details() or "")
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._shrink_batches()
                elif exc.code() == grpc.StatusCode.INVALID_ARGUMENT and await self._set_aside(exc):
                    self._misses = 0  # the collector answered; the next stream goes on past that event
                    continue
            except Exception as exc:
                # A bug here must not end delivery for good: the spool keeps filling meanwhile.
                log.exception("transport error")
                self._disconnected("INTERNAL", f"{type(exc).__name__}: {exc}")
            if self._connected_once and time.monotonic() - self._session_started >= _HEALTHY_SECONDS:
                self._misses = 0  # a stream that worked for a while: start the backoff afresh
            self._misses += 1
            collectors = self._config.collectors
            if len(collectors) > 1:
                self._index = (self._index + 1) % len(collectors)  # the next one, in order
                if self._connected_once:
                    self.stats.failovers += 1
            # Only a whole round of failures grows the backoff: the next collector is tried at
            # once (jittered, so a fleet leaving a dead collector does not arrive in step).
            delay = backoff_delay((self._misses - 1) // len(collectors), self._config.reconnect_max_seconds)
            log.debug("reconnecting in %.2fs to %s (failures in a row: %d)", delay, self.collector,
                      self._misses)
            await asyncio.sleep(delay)

    def _fail_back(self, index: int) -> None:
        """An earlier collector serves again: stream to it (in-flight batches go again, stored once)."""
        log.info("collector %s serves again: moving back to it from %s", self._config.collectors[index],
                 self.collector)
        self._failback_to = None
        self._index = index
        self._misses = 0
        self.stats.failbacks += 1
        self.stats.disconnects += 1

    async def _set_aside(self, exc: grpc.aio.AioRpcError) -> bool:
        """The collector refused one event and named it: set it aside so the stream can go on."""
        named = [v for k, v in exc.trailing_metadata() or () if k == REFUSED_SEQUENCE_KEY]
        if not named or not str(named[0]).isdigit():
            return False  # refused as a whole (a heartbeat, the hello): retried with backoff
        sequence = int(named[0])
        collector, problem = self.collector, exc.details() or ""

        def keep(seq: int, blob: bytes) -> None:
            self._refused.keep(seq, blob, collector, problem)

        done = await asyncio.to_thread(self._spool.set_aside, sequence, problem, keep)
        if done:
            self.stats.refused += 1
        return done

    def _shrink_batches(self) -> None:
        # The collector accepts smaller messages than our config says: halve until it fits,
        # rather than resending the same too-big batch forever.
        smaller = max(_MIN_BATCH_BYTES, self.batch_bytes // 2)
        if smaller < self.batch_bytes:
            self.batch_bytes = smaller
            log.warning("collector refused a batch as too large; batches are now at most %d bytes", smaller)

    def _disconnected(self, code: str, details: str) -> None:
        was_connected, self._connected = self._connected_once, False
        if was_connected:
            self.stats.disconnects += 1
        now = time.monotonic()
        # One line per outage, per change of status code, or per minute of a flapping link;
        # never one per retry. (Details vary per attempt; the code is the cause.)
        if code != self._last_failure or now - self._last_logged >= _LOG_REPEAT_SECONDS:
            verb = "lost connection to" if was_connected else "cannot reach"
            repeats = f" ({self._suppressed} similar failures not logged)" if self._suppressed else ""
            log.warning(
                "%s collector %s: status=%s %s; backlog=%d, retrying with backoff up to %.1fs%s",
                verb, self.collector, code, details, self._spool.backlog(),
                self._config.reconnect_max_seconds, repeats,
            )
            self._last_failure, self._last_logged, self._suppressed = code, now, 0
            self._outage_logged = True
        else:
            self._suppressed += 1
            log.debug("collector %s: status=%s %s", self.collector, code, details)

    async def _session(self) -> None:
        if self._enroll_pending:
            try:
                self._credentials = await asyncio.to_thread(channel_credentials, self._config, self.collector)
            except enroll.EnrollUnreachable as exc:  # reported and retried like any outage
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=str(exc)
                ) from exc
            self._enroll_pending = False
            log.info("enrolled with the collector; client certificate stored in %s", self._config.state_dir)
        self._connected_once = False
        options = channel_options(self._config)
        address = self.collector
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(address, options=options)
        else:
            channel = grpc.aio.secure_channel(address, self._credentials, options=options)
        try:
            call = pb_grpc.IngestStub(channel).Stream()
            session = _Session(self, call)
            await session.run()
        finally:
            self._connected = False
            await channel.close(grace=None)

    def _hello(self) -> pb.AgentMessage:
        return pb.AgentMessage(hello=pb.Hello(
            agent_id=self._identity.agent_id,
            version=self._version,
            hostname=self._identity.hostname,
            capabilities=self.capabilities,
            last_acked_sequence=self._spool.acked_sequence,
            next_sequence=self._spool.next_sequence,
            config_version=self.config_version,
        ))

    def _mark_connected(self, resumed_from: int) -> None:
        if not self._connected:
            self._connected = True
            self._connected_once = True
            self.stats.connects += 1
            self._session_started = time.monotonic()
            if self._outage_logged or self.stats.connects == 1 or len(self._config.collectors) > 1:
                self._outage_logged = False
                log.info(
                    "connected to collector %s; sending from sequence %d, backlog=%d",
                    self.collector, resumed_from, self._spool.backlog(),
                )


class _Session:
    """One stream: a sender, a reader and a heartbeat sharing a cursor."""

    def __init__(self, transport: Transport, call: _Call) -> None:
        self.t = transport
        self.call = call
        self.cursor = transport._spool.acked_sequence  # last sequence written on this stream
        self.resumed_from = self.cursor + 1  # where this stream started sending
        self.acked = self.cursor
        self.write_lock = asyncio.Lock()
        # Set once the collector has answered the hello: until then we do not know whether
        # our sequences follow what it holds (see Spool.rebase), so nothing is sent.
        self.greeted = asyncio.Event()

    @property
    def config(self) -> AgentConfig:
        """The transport's current settings (a pushed config may change them mid-stream)."""
        return self.t._config

    async def run(self) -> None:
        await self.write(self.t._hello())
        tasks = [
            asyncio.create_task(self.send_loop(), name="send"),
            asyncio.create_task(self.read_loop(), name="read"),
            asyncio.create_task(self.heartbeat_loop(), name="heartbeat"),
        ]
        if self.t._index > 0:
            tasks.append(asyncio.create_task(self.failback_loop(), name="failback"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise what ended the session
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.call.cancel()

    async def write(self, message: pb.AgentMessage) -> None:
        async with self.write_lock:  # sender and heartbeat share the stream
            await self.call.write(message)

    async def read_loop(self) -> None:
        spool = self.t._spool
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                return
            assert isinstance(message, pb.CollectorMessage)
            kind = message.WhichOneof("body")
            if kind == "ack":
                seq = message.ack.sequence
                if not self.greeted.is_set() and seq >= spool.next_sequence:
                    # Its answer to our hello: it holds sequences this spool would assign
                    # again (the spool was deleted or restored). Continue after them.
                    await asyncio.to_thread(spool.rebase, seq)
                    self.acked = self.cursor = seq
                    self.resumed_from = seq + 1
                    self.t.stats.last_ack = seq
                elif not self.t._connected and seq < self.acked:
                    # Its answer to our hello: it holds less than it once acknowledged (restored
                    # from a backup?). Those events are gone from our spool; say so loudly.
                    log.error(
                        "collector holds this agent's events only up to %d but acknowledged up to %d "
                        "before; events %d..%d are missing there", seq, self.acked, seq + 1, self.acked,
                    )
                self.t._mark_connected(self.resumed_from)
                if seq > self.acked:
                    self.acked = seq
                    self.t.stats.last_ack = seq
                    # The collector may already hold more than we sent on this stream.
                    self.cursor = max(self.cursor, min(seq, spool.next_sequence - 1))
                    await asyncio.to_thread(spool.ack, seq)
                    self.t._wakeup.set()
                self.greeted.set()
                self.t._wakeup.set()
            elif kind == "config":
                self.t._mark_connected(self.resumed_from)
                log.info("collector pushed configuration version %r", message.config.version)
                if self.t._on_config is not None:
                    await asyncio.to_thread(self.t._on_config, message.config)

    async def failback_loop(self) -> None:
        """On a later collector: now and then (jittered) ask the earlier ones; end the session for one
        that serves again."""
        while True:
            await asyncio.sleep(self.config.failback_seconds * random.uniform(0.5, 1.0))
            index = await first_serving(self.config.collectors[: self.t._index], self.t._credentials)
            if index is not None:
                self.t._failback_to = index
                return

    async def heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.t._beat_now.wait(), self.config.heartbeat_seconds)
            self.t._beat_now.clear()
            beat = pb.Heartbeat(backlog=self.t._spool.backlog(), config_version=self.t.config_version)
            beat.sent.CopyFrom(events.now())
            await self.write(pb.AgentMessage(heartbeat=beat))

    async def send_loop(self) -> None:
        spool = self.t._spool
        await self.greeted.wait()
        linger_until: float | None = None
        while True:
            batch = self.config.batch  # read each round: a pushed config may change it
            window = batch.max_events * _WINDOW_BATCHES
            self.t._wakeup.clear()
            pending = spool.next_sequence - 1 - self.cursor
            in_flight = self.cursor - self.acked
            if pending <= 0 or in_flight >= window:
                linger_until = None
                await self.t._wakeup.wait()
                continue
            now = time.monotonic()
            if pending < batch.max_events and not self.t._draining and in_flight > 0:
                # Wait a little for more, so a burst goes up as one batch (bounded by max_delay_ms,
                # or until the ack of what is in flight). With nothing in flight the link is
                # idle: what is spooled goes at once (an alert waits for no linger).
                if linger_until is None:
                    linger_until = now + batch.max_delay_ms / 1000
                if now < linger_until:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.t._wakeup.wait(), linger_until - now)
                    continue
            linger_until = None
            limit = min(batch.max_events, window - in_flight)
            rows = await asyncio.to_thread(spool.unsent, self.cursor, limit)
            if not rows:
                continue
            if rows[0][0] != self.cursor + 1:
                # Only acks delete rows, and we never send past the spool: this cannot happen
                # unless the spool file was swapped underneath us. Never skip silently.
                log.error("spool is missing sequences %d..%d", self.cursor + 1, rows[0][0] - 1)
            for part in split_batches(rows, self.t.batch_bytes):
                message = pb.AgentMessage()
                for _, blob in part:
                    message.batch.events.add().ParseFromString(blob)
                await self.write(message)
                self.cursor = max(self.cursor, part[-1][0])
                self.t.stats.batches_sent += 1
                self.t.stats.events_sent += len(part)
