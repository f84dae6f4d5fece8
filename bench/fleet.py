"""A fleet on several collectors sharing one PostgreSQL, against the same fleet on one collector.

    python -m bench.fleet [--agents 200] [--events 100] [--collectors 1,2] [--workers 2]

Simulated agents (asyncio gRPC streams in --workers load-generator processes) do what the agent's
transport does: hello, the collector's watermark, batches of 100 events with 8 unacknowledged at
most, heartbeats; each lists every collector, agent i preferring collector i mod n, and on a
broken stream moves to the next one at once (jittered; backing off only after a whole round of
the list failed, as agent/transport.py does), resuming from the watermark the new collector
reports. The event mix is realistic (file.read of tagged files, one
file.copy to a stick in 20 carrying tagged sources); a bench policy raises one alert per agent
(suppression folds the rest of its copies).

For each collector count n, on a fresh database of one throwaway PostgreSQL cluster (tests/pg.py,
fsync on): n real collector processes, every agent connected, then all events sent:

  connected        agents the store shows connected, each on a live collector
  ingest_eps       events stored per second, all agents sending at once
  cpu_ms_per_event collector CPU (with its sealer) per event stored, summed over the n collectors
  pg_cpu_ms_per_event   PostgreSQL server CPU per event stored
  failover_s       (n >= 2) after a kill -9 of collector 0: until every agent it had streams elsewhere
  alerts / alerts_expected   alerts in the store once the fleet's one policy evaluator has read
                   every stored event, against those expected: one bench-copy per agent and one
                   bench-fleet-drip, a window keyed by uid over all agents whichever collector took them
  alerts_after_kill  (n >= 2) the same count once an evaluator leads again after the kill
  evaluator_lag_s  from the last event acknowledged until the evaluator has evaluated every
                   stored event (what one evaluator's capacity adds to alert latency at this rate;
                   -1: not within 300 s)

The baseline is n = 1 in the same run: the JSON line's ratios (`ingest_ratio_N`, `cpu_ratio_N`)
are figures of n collectors over one. `--full` is the fleet's full scale (10,000 agents x 20
events over 1, 2 and 3 collectors, 8 load generators; long, not part of `make bench`); the
default run stays under two minutes on a quiet machine.
Final line: JSON with those keys per n (`connected_2`, `ingest_eps_2`, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil

from agent.transport import backoff_delay
from bench import _cli
from collector.store import Store, open_store, pgconnect
from protos import events
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from tests.e2e.harness import free_port
from tests.helpers import start_collector, wait_for, write_collector_config
from tests.pg import PgCluster, throwaway_cluster

_BATCH = 100
_WINDOW = 8
_HEARTBEAT = 2.0
_RECONNECT_MAX = 30.0  # the agent's default reconnect_max_seconds
POLICY = """
policies:
  - id: bench-copy
    title: Tagged file copied (bench)
    severity: high
    description: A bench file.copy carrying a tagged source; one alert per agent and user (folded).
    when:
      event.action: file.copy
      exfilguard.source.tags: bench-secret
    summary: "{user.name} on {host.name} copied {exfilguard.source.path}"
    tags: [attack.exfiltration]
"""
# Every agent's user has uid 1000: this window adds up the copies of all agents, whichever collector
# took them, and fires once when the last one is in (never, if each collector counted its own).
FLEET_POLICY = """
  - id: bench-fleet-drip
    title: Tagged copies across the fleet (bench)
    severity: medium
    description: Every bench copy of the fleet, in one window keyed by uid; fires once, at the last.
    when:
      event.action: file.copy
      exfilguard.source.tags: bench-secret
    aggregate: {{by: [user.id], window: 1h, count: {{gte: {copies}}}}}
    summary: "{{count}} tagged copies across the fleet"
    tags: [attack.exfiltration]
"""


# ------------------------------------------------------------------ load generator (worker)


def _events(agent_id: str, count: int) -> list[pb.Event]:
    out = []
    for seq in range(1, count + 1):
        user = pb.User(id="1000", name=f"user-{agent_id[-4:]}")
        process = pb.Process(pid=4242, executable="/usr/bin/cp", command_line="cp /srv/db/t.csv /media/usb/")
        if seq % 20 == 10:
            source = pb.Source(path=f"/srv/db/t-{seq}.csv", tags=["bench-secret"])
            written = pb.File(path=f"/media/usb/t-{seq}.csv", size=4096)
            event = events.new_event(
                "file.copy", user=user, process=process, file=written, exfilguard=pb.Extensions(source=source)
            )
        else:
            event = events.new_event("file.read", user=user, process=process,
                                     file=pb.File(path=f"/srv/db/t-{seq}.csv", size=4096))
        event.agent.id, event.agent.version, event.event.sequence = agent_id, "bench", seq
        event.host.name = f"ws-{agent_id}"
        out.append(event)
    return out


class _Agent:
    """One simulated agent's state across its streams."""

    def __init__(self, agent_id: str, order: list[str], count: int) -> None:
        self.id, self.order, self.count = agent_id, order, count
        self.events = _events(agent_id, count)
        self.acked = 0
        self.position = 0
        self.collector = ""
        self.broke_at: float | None = None
        self.misses = 0  # streams failed in a row
        self.failovers: list[float] = []  # seconds from a broken stream to the next one greeted
        self.greeted = asyncio.Event()
        self.done = asyncio.Event()

    async def run(self, go: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            address = self.order[self.position % len(self.order)]
            # A broken stream: an RPC error, or a write after the collector ended it.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._stream(address, go, stop)
            if stop.is_set():
                return
            if self.broke_at is None:
                self.broke_at = time.monotonic()
            # As the agent's transport: the next collector at once (jittered), backing off
            # exponentially only after a whole round of the list failed.
            self.misses += 1
            self.position += 1
            await asyncio.sleep(backoff_delay((self.misses - 1) // len(self.order), _RECONNECT_MAX))

    async def _stream(self, address: str, go: asyncio.Event, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.IngestStub(channel).Stream()  # written with call.write: one writer, this task
            hello = pb.Hello(agent_id=self.id, version="bench", hostname=f"ws-{self.id}",
                             last_acked_sequence=self.acked, next_sequence=self.count + 1)
            await call.write(pb.AgentMessage(hello=hello))
            first = await call.read()
            assert isinstance(first, pb.CollectorMessage)
            self.acked = max(self.acked, first.ack.sequence)
            if self.broke_at is not None:
                self.failovers.append(time.monotonic() - self.broke_at)
                self.broke_at = None
            self.collector = address
            self.misses = 0
            self.greeted.set()
            moved = asyncio.Event()

            async def read() -> None:
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        return
                    assert isinstance(message, pb.CollectorMessage)
                    if message.WhichOneof("body") == "ack" and message.ack.sequence > self.acked:
                        self.acked = message.ack.sequence
                        moved.set()
                        if self.acked >= self.count:
                            self.done.set()

            reader = asyncio.ensure_future(read())
            try:
                await go.wait()
                cursor = self.acked
                while cursor < self.count and not reader.done():
                    if cursor - self.acked >= _BATCH * _WINDOW:
                        moved.clear()
                        await asyncio.wait([reader, asyncio.ensure_future(moved.wait())],
                                           return_when=asyncio.FIRST_COMPLETED)
                        continue
                    part = self.events[cursor:cursor + _BATCH]
                    await call.write(pb.AgentMessage(batch=pb.EventBatch(events=part)))
                    cursor += len(part)
                while not stop.is_set() and not reader.done():
                    beat = pb.Heartbeat(sent=events.now(), backlog=self.count - self.acked)
                    await call.write(pb.AgentMessage(heartbeat=beat))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop.wait()), _HEARTBEAT)
                if reader.done():
                    reader.result()  # re-raise what broke the stream
            finally:
                reader.cancel()
                call.cancel()


async def _worker(args: argparse.Namespace) -> None:
    addresses = args.worker.split(",")
    agents = []
    for n in range(args.first_agent, args.first_agent + args.agents):
        first = n % len(addresses)
        agents.append(_Agent(f"fleet-{n:05d}", addresses[first:] + addresses[:first], args.events))
    go, stop = asyncio.Event(), asyncio.Event()
    tasks = []
    for agent in agents:
        tasks.append(asyncio.create_task(agent.run(go, stop)))
        await asyncio.sleep(0.001)
    for agent in agents:
        await agent.greeted.wait()
    loop = asyncio.get_running_loop()

    async def command() -> str:
        line: str = await loop.run_in_executor(None, sys.stdin.readline)
        return line.strip()

    print(json.dumps({"greeted": len(agents)}), flush=True)
    assert await command() == "go"
    go.set()
    for agent in agents:
        await agent.done.wait()
    print(json.dumps({"acked": sum(a.acked for a in agents)}), flush=True)
    line = await command()
    if line.startswith("killed "):  # wait until the killed collector's agents stream elsewhere
        killed = line.removeprefix("killed ")
        for agent in agents:
            while agent.collector == killed or agent.broke_at is not None:
                await asyncio.sleep(0.02)
        print(json.dumps({"moved": sum(1 for a in agents if a.failovers)}), flush=True)
        line = await command()
    assert line == "stop", line
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------ driver


def _cpu(process: psutil.Process) -> float:
    """CPU seconds of a process and its children (the collector's sealer), 0 once it is gone."""
    with contextlib.suppress(psutil.Error):
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return float(total)
    return 0.0


def _copies(events_per_agent: int) -> int:
    """Tagged copies one agent sends (its 10th, 30th, ... event)."""
    return sum(1 for seq in range(1, events_per_agent + 1) if seq % 20 == 10)


def _alerts(store: Store) -> int:
    return sum(1 for a in store.alerts(limit=1_000_000) if str(a["policy.id"]).startswith("bench-"))


def _evaluated(url: str, agents: int) -> bool:
    """True when one policy process leads the fleet's evaluation and has evaluated every stored event."""
    from collector.policy.fleet import ROLE
    from collector.store.leadership import led
    from collector.store.policylog import PolicyLog

    with pgconnect.connect(url) as conn:
        if not led(conn, ROLE):
            return False
        return PolicyLog.caught_up(conn) == agents


def _settle(count: Callable[[], int], expected: int, quiet: float = 3.0, limit: float = 60.0) -> int:
    """Poll `count` until it reaches `expected` or stops changing for `quiet` seconds (at most `limit`)."""
    deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = count()
        if now >= expected:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.2)
    return last


def _postgres(cluster: PgCluster) -> psutil.Process:
    return psutil.Process(int((cluster.data / "postmaster.pid").read_text().split()[0]))


def _send(workers: list[subprocess.Popen[str]], line: str) -> None:
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(line + "\n")
        worker.stdin.flush()


def _answers(workers: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"a load generator ended early (exit {worker.wait()})")
        out.append(json.loads(line))
    return out


def run_fleet(
    args: argparse.Namespace, cluster: PgCluster, collectors: int, directory: Path
) -> dict[str, Any]:
    """One fleet on `collectors` collectors: the figures of the docstring."""
    url = cluster.url(cluster.create_database(f"fleet{collectors}"))
    streams = max(1000, args.agents * 2)
    procs = []
    for index in range(collectors):
        home = directory / f"c{collectors}-{index}"
        (home / "policies").mkdir(parents=True)
        copies = args.agents * _copies(args.events)
        fleet_policy = FLEET_POLICY.format(copies=copies) if copies else ""
        (home / "policies" / "bench.yaml").write_text(POLICY + fleet_policy)
        config = write_collector_config(
            home, listen=f"127.0.0.1:{free_port()}", store=url, policies=[str(home / "policies")],
            log_level="warning", max_streams=streams, max_pending_hellos=streams,
            max_pending_hellos_per_peer=streams,
        )  # fmt: skip
        procs.append(start_collector(config, timeout=60))
    addresses = ",".join(p.address for p in procs)
    workers: list[subprocess.Popen[str]] = []
    base, extra = divmod(args.agents, args.workers)
    first = 0
    figures: dict[str, Any] = {}
    try:
        for n in range(args.workers):
            count = base + (1 if n < extra else 0)
            cmd = [sys.executable, "-m", "bench.fleet", "--worker", addresses, "--first-agent", str(first),
                   "--agents", str(count), "--events", str(args.events)]
            workers.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            first += count
        _answers(workers)
        collector_cpu = [psutil.Process(p.pid) for p in procs]
        cpu0 = sum(_cpu(p) for p in collector_cpu)
        pg = _postgres(cluster)
        pg0 = _cpu(pg)
        started = time.monotonic()
        _send(workers, "go")
        acked = sum(a["acked"] for a in _answers(workers))
        seconds = time.monotonic() - started
        total = args.agents * args.events
        figures["ingest_eps"] = total / seconds
        store = open_store(url, readonly=True)
        try:
            # The fleet's evaluator reads the store after the ack: wait until it has evaluated every
            # stored event (bounded) before taking the CPU. One bench-copy alert per agent (its first
            # copy is its 10th event), and one bench-fleet-drip for the whole fleet.
            expected = args.agents + 1 if _copies(args.events) else 0
            try:
                wait_for(lambda: _evaluated(url, args.agents), 300, "the fleet's evaluator")
                figures["evaluator_lag_s"] = time.monotonic() - started - seconds
            except TimeoutError:
                figures["evaluator_lag_s"] = -1.0  # not caught up in 300 s: the alerts may be short
            settled = _settle(lambda: _alerts(store), expected)
            figures["cpu_ms_per_event"] = (sum(_cpu(p) for p in collector_cpu) - cpu0) * 1000 / total
            figures["pg_cpu_ms_per_event"] = (_cpu(pg) - pg0) * 1000 / total
            figures["alerts"] = settled
            figures["alerts_expected"] = expected

            def all_connected() -> bool:
                return sum(1 for a in store.agents() if a.connected) == int(args.agents)

            with contextlib.suppress(TimeoutError):
                wait_for(all_connected, 10, "the registry flush")
            figures["connected"] = sum(1 for a in store.agents() if a.connected)
            figures["stored"] = store.count_events()
        finally:
            store.close()
        assert acked == total == figures["stored"], (acked, total, figures["stored"])
        if collectors >= 2:
            started = time.monotonic()
            procs[0].kill()
            _send(workers, f"killed {procs[0].address}")
            answers = _answers(workers)
            figures["failover_s"] = time.monotonic() - started
            figures["moved"] = sum(a["moved"] for a in answers)
            # The kill may have taken the evaluator with it: once another leads and has caught up,
            # nothing may have fired twice.
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: _evaluated(url, args.agents), 60, "an evaluator after the kill")
            store = open_store(url, readonly=True)
            try:
                figures["alerts_after_kill"] = _alerts(store)
            finally:
                store.close()
        _send(workers, "stop")
    finally:
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(30)
            if worker.poll() is None:
                worker.kill()
        for process in procs:
            with contextlib.suppress(Exception):
                process.stop()
    return figures


def main() -> None:
    """Run the benchmark (or, with --worker, one load-generator process)."""
    parser = _cli.parser("fleet", __doc__)
    _cli.agent_options(parser, 200, "simulated agents")
    parser.add_argument("--events", type=int, default=100, help="events per agent")
    parser.add_argument("--collectors", default="1,2", help="collector counts (the first is the baseline)")
    parser.add_argument("--full", action="store_true",
                        help="the full scale (long): 10,000 agents x 20 events over 1, 2 and 3 collectors, "
                             "8 load generators")  # fmt: skip
    args = parser.parse_args()
    if args.full and not args.worker:
        args.agents, args.events, args.collectors, args.workers = 10_000, 20, "1,2,3", 8
    if args.worker:
        asyncio.run(_worker(args))
        return
    counts = [int(c) for c in args.collectors.split(",")]
    directory = _cli.scratch("fleet")
    result: dict[str, Any] = {"agents": args.agents, "events": args.agents * args.events}
    try:
        with throwaway_cluster(durable=True) as cluster:
            for n in counts:
                print(f"fleet: {args.agents} agents x {args.events} events on {n} collector(s)", flush=True)
                figures = run_fleet(args, cluster, n, directory)
                for key, value in figures.items():
                    result[f"{key}_{n}"] = round(value, 4) if isinstance(value, float) else value
                line = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in figures.items())  # fmt: skip
                print(f"  {line}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    base = counts[0]
    for n in counts[1:]:
        result[f"ingest_ratio_{n}"] = round(result[f"ingest_eps_{n}"] / result[f"ingest_eps_{base}"], 3)
        cpu = result[f"cpu_ms_per_event_{n}"] / result[f"cpu_ms_per_event_{base}"]
        result[f"cpu_ratio_{n}"] = round(cpu, 3)
        print(f"{n} collectors vs {base}: ingest {result[f'ingest_ratio_{n}']:.2f}x, collector CPU per event "
              f"{result[f'cpu_ratio_{n}']:.2f}x; killed collector's agents streaming elsewhere after "
              f"{result.get(f'failover_s_{n}', 0):.2f} s; alerts {result[f'alerts_{n}']} of "
              f"{result[f'alerts_expected_{n}']} expected, "
              f"{result.get(f'alerts_after_kill_{n}')} after the kill")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
