"""Thousands of idle agent streams with heartbeats on one collector: all stay connected; collector RSS.

    python -m bench.idle_streams [--agents 2000] [--workers 2] [--hold 30] [--heartbeat 5]

A real collector process; the agents run in `--workers` load-generator processes, each agent
with its own channel (its own TCP connection, as real agents have), sending hello and then a
heartbeat every `--heartbeat` seconds for `--hold` seconds. A load process sends its agents'
heartbeats from one task, spread over the interval (no timer per agent): the two cores go to
the collector, not to the simulation. Checked: every agent got its
hello ack, no stream ended early, and the collector's own fleet registry (read from its
store, as `exfilguard agents` does) lists every agent as connected. Reported: the
collector's RSS with all streams open, as a ratio to its idle RSS measured in the same run
(target: under 1 GiB). A hello not acknowledged is counted by its reason.
The last line is JSON: agents, connected, acked, alive, rss_mib, idle_rss_mib, connect_seconds.
`--agents 10000` is the fleet-size run (minutes); the default stays within `make bench`'s budget.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import _cli
from collector.store.sqlite import SqliteStore
from protos import events
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from tests.helpers import start_collector, write_collector_config

MiB = 1 << 20
GiB = 1 << 30


# ------------------------------------------------------------------ load generator (worker)


class _Agent:
    """One idle agent's channel and stream; `broken` once anything but silence came back."""

    def __init__(self, address: str) -> None:
        # a subchannel pool of its own: gRPC otherwise shares one TCP connection between every
        # channel of a process to the same address (thousands of streams on one HTTP/2 connection)
        self.channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.call = pb_grpc.IngestStub(self.channel).Stream()
        self.broken = False

    async def hello(self, agent_id: str) -> str:
        """Say hello; "" when acknowledged, else why not."""
        hello = pb.Hello(agent_id=agent_id, version="bench", hostname=f"ws-{agent_id}")
        try:
            await self.call.write(pb.AgentMessage(hello=hello))
            reply = await asyncio.wait_for(self.call.read(), timeout=120)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {(exc.details() or '')[:80]}"
        except TimeoutError:
            return "no answer to the hello within 120 s"
        if isinstance(reply, pb.CollectorMessage) and reply.WhichOneof("body") == "ack":
            return ""
        return f"answered the hello with {reply!r:.60}"

    async def heartbeat(self) -> None:
        """One heartbeat; a stream that ended or refuses it is broken."""
        if self.call.done():
            self.broken = True
            return
        try:
            await self.call.write(pb.AgentMessage(heartbeat=pb.Heartbeat(sent=events.now(), backlog=0)))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            self.broken = True

    async def close(self) -> bool:
        """End the stream; True if it stayed up until now."""
        ok = not self.broken and not self.call.done()
        self.call.cancel()
        await self.channel.close()
        return ok


async def _heartbeats(agents: list[_Agent], every: float, stop: asyncio.Event) -> None:
    """Every agent's heartbeat each `every` seconds, spread evenly, from one task: the load
    generator keeps no timer per agent, so the figure measures the collector."""
    step = 100
    while not stop.is_set():
        started = time.monotonic()
        count = len(agents)
        for first in range(0, count, step):
            for agent in agents[first : first + step]:
                await agent.heartbeat()
            pause = started + every * min(count, first + step) / max(count, 1) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(pause, 0))
            if stop.is_set():
                return
        if not count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)


async def _worker(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    ids = [f"idle-{n:05d}" for n in range(args.first_agent, args.first_agent + args.agents)]
    agents: list[_Agent] = []  # acknowledged ones, heartbeating
    beating = asyncio.create_task(_heartbeats(agents, args.heartbeat, stop))

    async def connect(agent_id: str) -> str:
        agent = _Agent(args.worker)
        why = await agent.hello(agent_id)
        if why:
            agent.call.cancel()
            await agent.channel.close()
        else:
            agents.append(agent)
        return why

    hellos = []
    for agent_id in ids:
        hellos.append(asyncio.create_task(connect(agent_id)))
        await asyncio.sleep(args.pace)  # a fleet does not connect in one microsecond either
    failures = collections.Counter(await asyncio.gather(*hellos))
    acked = failures.pop("", 0)
    print(json.dumps({"acked": acked, "failures": failures}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    assert line.strip() == "stop"
    stop.set()
    await beating
    alive = sum(await asyncio.gather(*(agent.close() for agent in agents)))
    print(json.dumps({"alive": alive}), flush=True)


# ------------------------------------------------------------------ driver


def _connected(store_path: Path, prefix: str = "idle-") -> int:
    store = SqliteStore(store_path, readonly=True)
    try:
        return sum(1 for a in store.agents() if a.connected and a.id.startswith(prefix))
    finally:
        store.close()


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Start the collector and the fleet, hold, check, measure; the figures."""
    # Every simulated agent connects from 127.0.0.1 at once: the per-address hello limit is for
    # real fleets, where agents have addresses of their own.
    streams = max(10_000, args.agents * 2)
    config = write_collector_config(directory, log_level="warning", max_streams=streams,
                                    max_pending_hellos=streams, max_pending_hellos_per_peer=streams)
    collector = start_collector(config)
    process = psutil.Process(collector.pid)
    time.sleep(1.0)  # let the sealer and registry tasks settle before the idle measurement
    idle_rss = process.memory_info().rss
    workers: list[subprocess.Popen[str]] = []
    base, extra = divmod(args.agents, args.workers)
    share = [base + (1 if n < extra else 0) for n in range(args.workers)]
    first = 0
    try:
        started = time.monotonic()
        for count in share:
            cmd = [sys.executable, "-m", "bench.idle_streams", "--worker", collector.address,
                   "--first-agent", str(first), "--agents", str(count), "--heartbeat", str(args.heartbeat),
                   "--pace", str(args.pace)]
            workers.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            first += count
        acked = 0
        failures: collections.Counter[str] = collections.Counter()
        for worker in workers:
            assert worker.stdout is not None
            answer = json.loads(worker.stdout.readline())
            acked += answer["acked"]
            failures.update(answer["failures"])
        connect_seconds = time.monotonic() - started
        store_path = directory / "collector.db"
        deadline = time.monotonic() + 30
        while _connected(store_path) < args.agents and time.monotonic() < deadline:
            time.sleep(0.5)
        peak_rss = process.memory_info().rss
        hold_until = time.monotonic() + args.hold
        while time.monotonic() < hold_until:
            time.sleep(1.0)
            peak_rss = max(peak_rss, process.memory_info().rss)
        connected_at_end = _connected(store_path)
        cpu = process.cpu_percent(interval=2.0)
        alive = 0
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("stop\n")
            worker.stdin.flush()
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            alive += json.loads(out.strip().splitlines()[-1])["alive"]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        code = collector.stop()
    if code != 0:
        raise RuntimeError(f"collector exited with {code}:\n{collector.log()}")
    said: collections.Counter[str] = collections.Counter()
    for line in collector.log().splitlines():  # what the collector warned of, for the failures
        with contextlib.suppress(ValueError, AttributeError):
            said[str(json.loads(line).get("msg", ""))[:100]] += 1
    return {
        "acked": acked,
        "failures": failures,
        "said": said,
        "alive": alive,
        "connected": connected_at_end,
        "connect_seconds": connect_seconds,
        "idle_rss": idle_rss,
        "peak_rss": peak_rss,
        "cpu_percent": cpu,
    }


def main() -> None:
    """Run the benchmark (or, with --worker, one load-generator process)."""
    parser = _cli.parser("idle_streams", __doc__)
    _cli.agent_options(parser, 2000, "concurrent idle agent streams")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold every stream open")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between an agent's heartbeats")
    parser.add_argument("--pace", type=float, default=0.002,
                        help="seconds between two connections of one load process")
    args = parser.parse_args()
    if _cli.run_worker(args, _worker):
        return
    files = _cli.open_files()
    if files != resource.RLIM_INFINITY and files < args.agents / args.workers + 256:
        print(f"warning: open files limit {files} is below what {args.agents} agents in {args.workers} "
              "processes need: raise ulimit -Hn, or add --workers", flush=True)
    directory = _cli.scratch("idle")
    try:
        print(f"idle streams: {args.agents} agents in {args.workers} processes, heartbeat every "
              f"{args.heartbeat:g} s, held {args.hold:g} s", flush=True)
        r = run(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    per_stream = (r["peak_rss"] - r["idle_rss"]) / max(1, args.agents) / 1024
    print(f"hello acked: {r['acked']}/{args.agents} (all connected after {r['connect_seconds']:.1f} s)")
    for reason, count in r["failures"].most_common(5):
        print(f"  not acked: {count} x {reason}")
    for message, count in r["said"].most_common(5):
        print(f"  collector logged: {count} x {message}")
    print(f"connected in the collector's registry at the end of the hold: {r['connected']}/{args.agents}")
    print(f"streams alive until the end: {r['alive']}/{args.agents}")
    print(f"collector RSS idle (baseline): {r['idle_rss'] / MiB:.0f} MiB; with {args.agents} streams: "
          f"{r['peak_rss'] / MiB:.0f} MiB = {r['peak_rss'] / r['idle_rss']:.2f}x baseline "
          f"(+{per_stream:.0f} KiB per stream); target < 1024 MiB")
    print(f"collector CPU while idle with all streams: {r['cpu_percent']:.0f}% of one core")
    met = r["acked"] == r["alive"] == r["connected"] == args.agents and r["peak_rss"] < GiB
    print(f"targets {'met' if met else 'NOT met'}")
    print(json.dumps({"agents": args.agents, "connected": r["connected"], "acked": r["acked"],
                      "alive": r["alive"],
                      "rss_mib": round(r["peak_rss"] / MiB, 1), "idle_rss_mib": round(r["idle_rss"] / MiB, 1),
                      "connect_seconds": round(r["connect_seconds"], 1)}))
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
