"""The Ingest service: one long-lived gRPC stream per agent, hello first, then batches and heartbeats.

Protocol (protos/exfilguard.proto): the first message must be a Hello; the collector answers
it with an Ack of what it already holds for that agent (the agent resends from there), then
acknowledges every batch with the highest contiguous sequence stored. Anything malformed ends
only that stream, with INVALID_ARGUMENT and a message naming the problem.

All store writes go through `StoreWriter`: one thread, and the batches that arrive from many
streams while a commit is running share the next commit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from collector import metrics
from collector.fleet.config import ConfigPusher, PushStream
from collector.fleet.registry import FleetRegistry
from collector.listeners import EventListener, notify_stored
from collector.metrics import CollectorMetrics
from collector.store.base import IngestResult, Store, StoreError
from collector.streamlimits import IdleStreams, RefusalLog, Slots, StreamLimits, StreamWatch, peer_host
from collector.wirecheck import (
    MAX_SEQUENCE_AHEAD,
    Malformed,
    Refusal,
    WireBatch,
    checked_batch,
    heartbeat_problem,
    hello_problem,
    parse_agent_message,
)
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from protos.wire import REFUSED_SEQUENCE_KEY

log = logging.getLogger("exfilguard.collector.ingest")

# At most this many events in one commit: acks keep flowing, and the sealer and the listeners (the
# policy process) take one group while the next is stored. With 20,000 (a whole fleet's window in
# one commit) each commit waited for the sealer to chain most of the previous one.
_GROUP_EVENTS = 5_000
# Stored but not yet chained events beyond which a commit first waits for the sealer: the chain
# stays within about a second of the acks, and a busy collector's cores go to the chain too. Two
# groups, so the sealer chains one while the next is stored. A sealer that makes no progress
# for _CHAIN_STALL_SECONDS (stuck, dead, restarting) is not waited for, and no commit waits longer
# than _CHAIN_HOLD_SECONDS: the chain may slow ingest, never stop it.
MAX_UNSEALED = 10_000
# Committed groups handed to the listeners but not taken yet: a listener short of room (the policy
# process's pipe) holds the commit after these, not the next one, so evaluating overlaps storing.
_LISTENING_GROUPS = 2
_CHAIN_HOLD_SECONDS = 10.0
_CHAIN_STALL_SECONDS = 1.0
_CHAIN_LOOK_SECONDS = 0.01  # while a commit waits: each look is one small query of the chains table
_STREAM_PIPELINE = 16  # batches of one stream read ahead of their commit (bounds memory per stream)
_ACKER = "acker"  # why a stream's reading was ended: its acker failed

T = TypeVar("T")
# What a stream's acker writes, in order: a batch's ack once committed, a pushed config, or the end.
_Outgoing = asyncio.Future[IngestResult] | pb.CollectorMessage | None


class StoreWriter:
    """Runs every store write on one dedicated thread and groups concurrent batches into one commit."""

    def __init__(
        self,
        store: Store,
        *,
        seal_inline: bool = False,
        metrics: CollectorMetrics | None = None,
        listeners: Sequence[EventListener] = (),
    ) -> None:
        self.store = store
        self.metrics = metrics or CollectorMetrics()
        # Told of each commit's newly stored events by the writer's own task, not by the streams' ackers:
        # a stream that ended (its agent closed it on the last ack) cancelled its acker, and the
        # batch whose ack had just gone out was never passed on (stored, never evaluated).
        self.listeners = list(listeners)
        # False: the sealer process chains stored events; acks do not wait for hashing.
        self.seal_inline = seal_inline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._pending: collections.deque[tuple[str, Sequence[pb.Event], asyncio.Future[IngestResult]]] = (
            collections.deque()
        )
        self._wake = asyncio.Event()
        self._closing = False
        self._unsealed = 0  # the store's figure when last read, plus what was stored since
        self._unwatched_until = 0.0  # the sealer stalled: commits do not wait for it until then
        loop = asyncio.get_running_loop()
        self._heard: asyncio.Queue[list[IngestResult | Exception] | None] = asyncio.Queue(_LISTENING_GROUPS)
        self._teller = loop.create_task(self._tell(), name="store-listeners") if self.listeners else None
        self._task = loop.create_task(self._run(), name="store-writer")

    async def ingest(self, agent_id: str, events: Sequence[pb.Event]) -> IngestResult:
        """Store a batch (shared commit with whatever else is waiting); resolves after the commit."""
        return await self.submit(agent_id, events)

    def submit(self, agent_id: str, events: Sequence[pb.Event]) -> asyncio.Future[IngestResult]:
        """Queue a batch; the future resolves after its commit. Batches of one agent commit in order."""
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append((agent_id, events, future))
        self._wake.set()
        return future

    def _timed_store_group(
        self, batches: list[tuple[str, Sequence[pb.Event]]]
    ) -> list[IngestResult | Exception]:
        started = time.perf_counter()
        try:
            return self._store_group(batches)
        finally:
            self.metrics.store_seconds.observe(time.perf_counter() - started)

    def _store_group(self, batches: list[tuple[str, Sequence[pb.Event]]]) -> list[IngestResult | Exception]:
        try:
            return list(self.store.ingest_batches(batches, seal=self.seal_inline))
        except Exception as exc:
            if len(batches) == 1:
                return [exc]
        # One batch spoiled the shared transaction: store each on its own, so only that one fails.
        out: list[IngestResult | Exception] = []
        for batch in batches:
            try:
                out.append(self.store.ingest_batches([batch], seal=self.seal_inline)[0])
            except Exception as exc:
                out.append(exc)
        return out

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run any other store call on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, size = [], 0
                while self._pending and size < _GROUP_EVENTS:
                    item = self._pending.popleft()
                    group.append(item)
                    size += len(item[1])
                batches = [(agent_id, events) for agent_id, events, _ in group]
                await self._wait_for_chain(loop)
                started = loop.time()
                results = await loop.run_in_executor(self._executor, self._timed_store_group, batches)
                if log.isEnabledFor(logging.DEBUG):
                    took = round((loop.time() - started) * 1e3, 1)
                    log.debug("stored group", extra={"batches": len(group), "events": size, "ms": took})
                received = stored = failed = 0
                for (agent_id, events, future), result in zip(group, results, strict=True):
                    if isinstance(result, Exception):
                        failed += 1
                    else:
                        received += len(events)
                        stored += len(result.stored)
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        log.error("store write failed: %s", result, extra={"agent_id": agent_id})
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                # Once per commit, not per batch or event: the hot path stays as it was.
                self._unsealed += stored
                self.metrics.events_ingested.inc(stored)
                self.metrics.events_duplicate.inc(received - stored)
                if failed:
                    self.metrics.store_failures.inc(failed)
                if stored and self._teller is not None:
                    await self._heard.put(results)
            if self._closing:
                return

    async def _tell(self) -> None:
        """Pass each commit's newly stored events on, in commit order (per agent, sequence order).

        A listener short of room (the policy process's pipe) holds this task, and once
        _LISTENING_GROUPS commits wait for it, the next commit: that is how a slow policy process
        slows ingest, and nothing stored is skipped.
        """
        while (results := await self._heard.get()) is not None:
            for result in results:
                if not isinstance(result, Exception) and result.stored:
                    await notify_stored(self.listeners, result.stored, result.data)

    async def _wait_for_chain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the next commit while more than MAX_UNSEALED events wait for the sealer (bounded)."""
        if self.seal_inline or self._unsealed <= MAX_UNSEALED or loop.time() < self._unwatched_until:
            return  # the usual case: nothing is read from the store
        started = moving = loop.time()
        before: int | None = None
        while not self._closing:
            try:
                unsealed = await loop.run_in_executor(self._executor, self.store.unsealed)
            except StoreError:
                unsealed = None
            self._unsealed = unsealed or 0  # None: this store cannot tell; never wait for it
            now = loop.time()
            if before is None or self._unsealed < before:
                moving = now
            if now - moving >= _CHAIN_STALL_SECONDS:
                self._unwatched_until = now + _CHAIN_HOLD_SECONDS  # not moving: not waited for a while
                return
            if self._unsealed <= MAX_UNSEALED or now - started >= _CHAIN_HOLD_SECONDS:
                return
            before = self._unsealed
            await asyncio.sleep(_CHAIN_LOOK_SECONDS)

    async def close(self) -> None:
        """Finish pending writes, then stop the thread (the store itself stays open)."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._teller is not None:  # every stored event is passed on before close returns
            await self._heard.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._teller
        self._executor.shutdown(wait=True)


def add_to_server(servicer: IngestServicer, server: grpc.aio.Server) -> None:
    """Serve the Ingest stream with our own request parser (wirecheck.parse_agent_message).

    The generated stub's parser raises on bad bytes, which gRPC answers with UNKNOWN and a logged
    traceback per message; ours hands the servicer a `Malformed` to refuse with INVALID_ARGUMENT.
    """
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=parse_agent_message,
            response_serializer=pb.CollectorMessage.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(INGEST_SERVICE, handlers),))
    server.add_registered_method_handlers(INGEST_SERVICE, handlers)


INGEST_SERVICE = pb.DESCRIPTOR.services_by_name["Ingest"].full_name
_Context = grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage]


def _ending_with(watch: StreamWatch) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback for a stream's acker: an acker that failed ends the stream's reading too."""

    def done(acker: asyncio.Task[None]) -> None:
        if not acker.cancelled() and acker.exception() is not None:
            watch.end(_ACKER)

    return done


class IngestServicer(pb_grpc.IngestServicer):
    """The agents' stream endpoint: validates, stores via the writer (it tells listeners), acknowledges."""

    def __init__(
        self,
        writer: StoreWriter,
        registry: FleetRegistry,
        limits: StreamLimits | None = None,
        pusher: ConfigPusher | None = None,
        *,
        metrics: CollectorMetrics | None = None,
    ) -> None:
        self._writer = writer
        self._metrics = metrics or writer.metrics
        self._pusher = pusher  # central agent config; None: nothing is pushed
        self._registry = registry
        self.limits = limits or StreamLimits()
        self._pending = Slots(self.limits.max_pending_hellos, self.limits.max_pending_hellos_per_peer)
        self._agents = Slots(self.limits.max_streams, self.limits.max_streams_per_peer)
        self._idle = IdleStreams(self.limits.idle_stream_seconds)
        self._refusals = RefusalLog(log)
        self._alarms = RefusalLog(log, level=logging.ERROR)  # hello claims any agent can repeat

    @property
    def streams(self) -> int:
        """Agent streams open (past their hello)."""
        return self._agents.open

    @property
    def pending(self) -> int:
        """Streams open that have not said hello yet."""
        return self._pending.open

    async def Stream(  # type: ignore[override]  # read()/write() style, which the stubs do not model
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: _Context,
    ) -> None:
        """One agent's stream, from hello to disconnect."""
        peer = peer_host(context.peer())
        full = self._pending.refusal(peer)
        if full:
            await self._refuse(context, peer, f"too many streams waiting for their hello: {full}",
                               metrics.PENDING_HELLOS)
        self._pending.take(peer)
        pending = True
        agent_id = ""
        try:
            first = await self._hello(context, peer)
            if first is None:
                return
            full = self._agents.refusal(peer)
            if full:
                await self._refuse(context, peer, f"collector is at max_streams: {full}", metrics.MAX_STREAMS)
            self._pending.give_back(peer)
            pending = False
            self._agents.take(peer)
            agent_id = first.hello.agent_id
            self._registry.connected(first.hello)
            watermark = await self._writer.call(self._writer.store.watermark, agent_id)
            if first.hello.last_acked_sequence > watermark:
                # The store lost acknowledged events (restored from a backup?): the agent has
                # deleted them from its spool, so they are gone. Say so loudly.
                self._alarms.log(
                    "agent was acknowledged up to %d but the store holds only %d",
                    first.hello.last_acked_sequence,
                    watermark,
                    extra={"agent_id": agent_id},
                )
            elif 0 < first.hello.next_sequence <= watermark:
                # Its spool restarted below what we hold (deleted or restored from an old copy).
                # The agent renumbers after our ack and records an agent.gap; an agent that did
                # not would have its new events taken for resends and dropped, so log it here too.
                self._alarms.log(
                    "agent's next sequence is %d but the store already holds up to %d: "
                    "its spool was deleted or restored; expecting it to continue after %d",
                    first.hello.next_sequence,
                    watermark,
                    watermark,
                    extra={"agent_id": agent_id},
                )
            log.info(
                "agent connected",
                extra={
                    "agent_id": agent_id,
                    "host": first.hello.hostname,
                    "version": first.hello.version,
                    "watermark": watermark,
                    "agent_last_acked": first.hello.last_acked_sequence,
                },
            )
            await context.write(pb.CollectorMessage(ack=pb.Ack(sequence=watermark)))
            pushed = self._pusher.on_hello(first.hello) if self._pusher is not None else None
            if pushed is not None:
                await context.write(pushed)
            await self._serve(
                agent_id, context, watermark, first.hello, pushed.config.version if pushed else None
            )
        finally:
            if pending:
                self._pending.give_back(peer)
            else:
                self._agents.give_back(peer)
            if agent_id:
                self._registry.disconnected(agent_id)
                log.info("agent disconnected", extra={"agent_id": agent_id})

    async def _hello(self, context: _Context, peer: str) -> pb.AgentMessage | None:
        """The stream's valid hello; None at EOF. Ends the stream without one within hello_timeout_seconds."""
        try:
            first: object = await asyncio.wait_for(context.read(), self.limits.hello_timeout_seconds)
        except TimeoutError:
            await self._refuse(
                context,
                peer,
                f"no hello within {self.limits.hello_timeout_seconds:g} s (hello_timeout_seconds)",
                metrics.HELLO_TIMEOUT,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if isinstance(first, Malformed):
            await self._reject(context, "", first.problem, first.reason)
        if isinstance(first, WireBatch):
            first = first.message  # refused below: not a hello
        if not isinstance(first, pb.AgentMessage):  # EOF: the agent closed before saying hello
            return None
        kind = first.WhichOneof("body")
        if kind != "hello":
            await self._reject(
                context, "", f"the first message must be a hello, got {kind or 'nothing'}", metrics.NO_HELLO
            )
        problem = hello_problem(first.hello)
        if problem:
            await self._reject(context, "", problem, metrics.BAD_HELLO)
        return first

    async def _serve(
        self,
        agent_id: str,
        context: _Context,
        watermark: int,
        hello: pb.Hello | None = None,
        config_sent: str | None = None,
    ) -> None:
        # Reading runs ahead of storing: the next batches are read and queued for the writer
        # while earlier ones commit, so one stream's batches can share a commit (with a
        # window of 8, one batch per stream per commit would cap ingest at a fraction of
        # what SQLite can do). Acks go out in order from a task of their own.
        inflight: asyncio.Queue[_Outgoing] = asyncio.Queue(_STREAM_PIPELINE)
        acked = [watermark]  # the acker moves it; batches may not run further than MAX_SEQUENCE_AHEAD past it
        acker = asyncio.create_task(
            self._acknowledge(agent_id, context, inflight, acked), name=f"ack-{agent_id}"
        )
        # No timer per stream: one sweep ends quiet streams, and an acker that fails (store
        # failure) ends the reading here the same way, by cancelling this task.
        watch = self._idle.watch()
        acker.add_done_callback(_ending_with(watch))
        # Config pushed after a reload goes through the acker too: one writer per stream.
        pushing: PushStream | None = None
        if self._pusher is not None and hello is not None:
            pushing = self._pusher.attach(hello, config_sent, inflight.put)
        try:
            await self._take_messages(agent_id, context, inflight, acked, watch, pushing)
            await acker
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not watch.ending or task is None:
                raise
            task.uncancel()
            if watch.ending == _ACKER:
                await acker  # raises what ended the stream (its abort)
                return
            # Nothing for idle_stream_seconds, not even a heartbeat: a dead or stuck agent.
            idle = self._idle.idle_seconds
            self._metrics.stream_rejected("DEADLINE_EXCEEDED", metrics.IDLE)
            log.info("closing an idle stream", extra={"agent_id": agent_id, "idle_seconds": idle})
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"nothing received for {idle:g} s (idle_stream_seconds); reconnect",
            )
        finally:
            self._idle.forget(watch)
            if pushing is not None and self._pusher is not None:
                self._pusher.detach(pushing)
            if not acker.done():
                acker.cancel()
            # Awaited even when done: an acker that failed writing (the stream was aborted under
            # it) must have its exception retrieved, or asyncio logs it as an ERROR traceback.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await acker

    async def _take_messages(  # noqa: PLR0917 (the stream's state, passed from _serve)
        self,
        agent_id: str,
        context: _Context,
        inflight: asyncio.Queue[_Outgoing],
        acked: list[int],
        watch: StreamWatch,
        pushing: PushStream | None,
    ) -> None:
        """Read the stream's messages until the agent closes its side (then queue the end for the acker)."""
        clock = time.monotonic
        while True:
            message: object = await context.read()
            watch.heard = clock()
            if isinstance(message, Malformed):
                await self._reject(context, agent_id, message.problem, message.reason, message.sequence)
            data = None
            if isinstance(message, WireBatch):
                data = message.data
                message = message.message
            if not isinstance(message, pb.AgentMessage):  # EOF: the agent closed its side
                await inflight.put(None)
                return
            kind = message.WhichOneof("body")
            if kind == "batch":
                ceiling = acked[0] + MAX_SEQUENCE_AHEAD
                checked = checked_batch(agent_id, message.batch.events, ceiling, data)
                if isinstance(checked, Refusal):
                    await self._reject(
                        context, agent_id, checked.problem, metrics.BAD_BATCH, checked.sequence
                    )
                    continue  # not reached: the rejection ends the stream
                self._registry.seen(agent_id)
                await inflight.put(self._writer.submit(agent_id, checked))
            elif kind == "heartbeat":
                problem = heartbeat_problem(message.heartbeat)
                if problem:
                    await self._reject(context, agent_id, problem, metrics.BAD_HEARTBEAT)
                self._registry.heartbeat(agent_id, message.heartbeat)
                if pushing is not None:
                    ConfigPusher.reported(pushing, message.heartbeat.config_version)
            elif kind == "hello":
                await self._reject(
                    context,
                    agent_id,
                    "hello may only be the first message of a stream",
                    metrics.REPEATED_HELLO,
                )
            else:
                await self._reject(
                    context, agent_id, "empty AgentMessage (no body set)", metrics.EMPTY_MESSAGE
                )

    async def _acknowledge(
        self,
        agent_id: str,
        context: _Context,
        inflight: asyncio.Queue[_Outgoing],
        acked: list[int],
    ) -> None:
        """Ack each queued batch once committed, in order; send queued config."""
        while (future := await inflight.get()) is not None:
            if isinstance(future, pb.CollectorMessage):
                await context.write(future)
                continue
            try:
                result = await future
            except StoreError:
                # Logged by the writer. Nothing was acknowledged: the agent keeps the batch
                # and resends it after reconnecting.
                self._metrics.stream_rejected("UNAVAILABLE", metrics.STORE_FAILED)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "collector could not store the batch")
            self._metrics.batches_acked.inc()  # before the write: the agent may act on the ack at once
            acked[0] = result.watermark
            self._registry.stored(agent_id, result.stored)
            await context.write(pb.CollectorMessage(ack=pb.Ack(sequence=result.watermark)))

    async def _reject(
        self, context: _Context, agent_id: str, problem: str, reason: str, sequence: int = 0
    ) -> None:
        """End the stream with INVALID_ARGUMENT naming the problem (one WARNING, rate-limited).

        A refusal of one event names its sequence in the trailing metadata, so the agent sets
        that event aside (with an agent.gap) rather than sending it again forever.
        """
        peer = peer_host(context.peer())
        self._refusals.log("stream rejected: %s", problem, extra={"agent_id": agent_id, "peer": peer})
        self._metrics.stream_rejected("INVALID_ARGUMENT", reason)
        trailer = ((REFUSED_SEQUENCE_KEY, str(sequence)),) if sequence else ()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem, trailing_metadata=trailer)

    async def _refuse(
        self,
        context: _Context,
        peer: str,
        problem: str,
        reason: str,
        code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED,
    ) -> None:
        """End a stream for a limit rather than for what it sent."""
        self._refusals.log("stream refused: %s", problem, extra={"peer": peer})
        self._metrics.stream_rejected(code.name, reason)
        await context.abort(code, problem)
