"""Listeners (the policy engine's seam): new events once, failures contained, silent agents reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from collector import config as collector_config
from collector.listeners import AGENT_SILENT, EventListener
from collector.server import Collector
from collector.store.sqlite import SqliteStore
from protos import events
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from tests.helpers import Held, make_events, write_collector_config


class Recorder:
    """Keeps every mapping it is given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def on_events(self, mappings: list[dict[str, Any]]) -> None:
        self.seen.extend(mappings)


class Broken:
    """Fails on every call."""

    async def on_events(self, mappings: list[dict[str, Any]]) -> None:
        raise RuntimeError("policy engine bug")


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _scenario(tmp_path: Path) -> None:
    config = collector_config.load(write_collector_config(tmp_path, silent_agent_seconds=0.5))
    store = SqliteStore(config.store)
    recorder = Recorder()
    listeners: list[EventListener] = [Broken(), recorder]
    collector = Collector(config, store, listeners)
    await collector.start()
    try:
        async with grpc.aio.insecure_channel(config.listen) as channel:
            out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()

            async def requests() -> Any:
                while (message := await out.get()) is not None:
                    yield message

            call = pb_grpc.IngestStub(channel).Stream(requests())

            async def ack() -> int:
                reply = await call.read()
                assert isinstance(reply, pb.CollectorMessage)
                sequence: int = reply.ack.sequence
                return sequence

            await out.put(pb.AgentMessage(hello=pb.Hello(agent_id="quiet", hostname="ws-quiet")))
            assert await ack() == 0
            await out.put(pb.AgentMessage(batch=pb.EventBatch(events=make_events("quiet", 1, 5))))
            assert await ack() == 5
            await out.put(pb.AgentMessage(batch=pb.EventBatch(events=make_events("quiet", 3, 7))))
            assert await ack() == 7
            # The broken listener did not stop the recorder or ingest; duplicates were not re-sent.
            await _until(lambda: len(recorder.seen) == 7)
            assert [m["event.sequence"] for m in recorder.seen] == [1, 2, 3, 4, 5, 6, 7]

            # Silence: reported once, then re-armed by a heartbeat.
            await _until(lambda: any(m["event.action"] == AGENT_SILENT for m in recorder.seen))
            silent = [m for m in recorder.seen if m["event.action"] == AGENT_SILENT]
            assert len(silent) == 1
            assert silent[0]["agent.id"] == "quiet"
            assert silent[0]["host.name"] == "ws-quiet"
            assert silent[0]["event.kind"] == "collector"
            assert "no heartbeat for 0.5 s" in silent[0]["event.reason"]
            await asyncio.sleep(0.6)  # longer than one check interval: must not repeat
            assert sum(m["event.action"] == AGENT_SILENT for m in recorder.seen) == 1
            await out.put(pb.AgentMessage(heartbeat=pb.Heartbeat(sent=events.now(), backlog=1)))
            await _until(lambda: sum(m["event.action"] == AGENT_SILENT for m in recorder.seen) == 2)
            await out.put(None)
            await call.wait_for_connection()
    finally:
        await collector.stop()
        store.close()


def test_listeners_get_new_events_once_and_silent_agents(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


async def _leaving(tmp_path: Path) -> None:
    config = collector_config.load(write_collector_config(tmp_path))
    store = SqliteStore(config.store)
    held = Held()
    collector = Collector(config, store, [held])
    await collector.start()
    try:
        async with grpc.aio.insecure_channel(config.listen) as channel:
            call = pb_grpc.IngestStub(channel).Stream()

            async def ack() -> int:
                reply = await call.read()
                assert isinstance(reply, pb.CollectorMessage)
                return int(reply.ack.sequence)

            await call.write(pb.AgentMessage(hello=pb.Hello(agent_id="leaver", hostname="ws-leaver")))
            assert await ack() == 0
            await call.write(pb.AgentMessage(batch=pb.EventBatch(events=make_events("leaver", 1, 5))))
            assert await ack() == 5
            call.cancel()  # the agent goes away on its last ack, its events not yet passed on
        await _until(lambda: not collector.registry.is_connected("leaver"))
        held.release.set()
        await _until(lambda: held.sequences == [1, 2, 3, 4, 5])
    finally:
        await collector.stop()
        store.close()


def test_a_batch_acknowledged_as_its_agent_leaves_still_reaches_the_listeners(tmp_path: Path) -> None:
    asyncio.run(_leaving(tmp_path))
