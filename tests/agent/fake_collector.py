"""A minimal in-process grpc.aio Ingest servicer for transport unit tests (the real one is tested in e2e).

It stores events in memory keyed by sequence (idempotent, like the real store), acks the
highest contiguous sequence, records hellos, heartbeats and batch sizes, and can push config.
It runs its own event loop on a thread, as the agent's transport does, so both sides are real.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc


@dataclass
class Received:
    """Everything the fake collector saw; survives server restarts like a real store."""

    events: dict[int, pb.Event] = field(default_factory=dict)
    deliveries: int = 0  # events received including resends
    hellos: list[pb.Hello] = field(default_factory=list)
    heartbeats: list[pb.Heartbeat] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def contiguous(self) -> int:
        """Highest sequence n with 1..n all stored."""
        n = 0
        while n + 1 in self.events:
            n += 1
        return n


_Context = grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage]


class _Servicer(pb_grpc.IngestServicer):
    def __init__(self, received: Received, push: asyncio.Queue[pb.AgentConfig], reject_batches: bool) -> None:
        self.received = received
        self.push = push
        self.reject_batches = reject_batches

    async def Stream(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: _Context
    ) -> AsyncIterator[pb.CollectorMessage]:
        outbox: asyncio.Queue[pb.CollectorMessage | None] = asyncio.Queue()

        async def consume() -> None:
            async for message in request_iterator:
                kind = message.WhichOneof("body")
                if kind == "batch" and self.reject_batches:
                    await outbox.put(None)  # ends the stream: the agent sees it closed after its hello
                    return
                with self.received.lock:
                    if kind == "hello":
                        self.received.hellos.append(message.hello)
                    elif kind == "heartbeat":
                        self.received.heartbeats.append(message.heartbeat)
                    elif kind == "batch":
                        self.received.batch_sizes.append(len(message.batch.events))
                        for event in message.batch.events:
                            self.received.deliveries += 1
                            self.received.events.setdefault(event.event.sequence, event)
                    ack = self.received.contiguous()
                await outbox.put(pb.CollectorMessage(ack=pb.Ack(sequence=ack)))
            await outbox.put(None)

        async def forward_pushes() -> None:
            while True:
                config = await self.push.get()
                await outbox.put(pb.CollectorMessage(config=config))

        tasks = [asyncio.create_task(consume()), asyncio.create_task(forward_pushes())]
        try:
            while (item := await outbox.get()) is not None:
                yield item
        finally:
            for task in tasks:
                task.cancel()


class FakeCollector:
    """Start/stop a grpc.aio server on 127.0.0.1:port in a background thread."""

    def __init__(
        self, port: int = 0, received: Received | None = None, max_message_bytes: int = 4 << 20,
        reject_batches: bool = False,
    ) -> None:
        self.received = received or Received()
        self._reject_batches = reject_batches
        self.port = port
        self._max = max_message_bytes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self._push: asyncio.Queue[pb.AgentConfig] | None = None

    def start(self) -> FakeCollector:
        """Listen and serve; returns once the port is bound."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._push = asyncio.Queue()
        options = [
            ("grpc.max_receive_message_length", self._max),
            ("grpc.max_send_message_length", self._max),
        ]
        self._server = grpc.aio.server(options=options)
        servicer = _Servicer(self.received, self._push, self._reject_batches)
        pb_grpc.add_IngestServicer_to_server(servicer, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    def push_config(self, config: pb.AgentConfig) -> None:
        """Send a configuration message down every open stream (one stream in these tests)."""
        assert self._push is not None
        push = self._push
        self._loop.call_soon_threadsafe(push.put_nowait, config)

    def stop(self) -> None:
        """Stop at once, cutting open streams (like a crashed collector)."""
        async def _stop() -> None:
            assert self._server is not None
            await self._server.stop(grace=None)

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def address(self) -> str:
        """host:port to put in agent.yaml."""
        return f"127.0.0.1:{self.port}"
