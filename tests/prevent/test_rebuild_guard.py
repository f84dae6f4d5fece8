"""A pushed config that rebuilds the sensors (new tags) leaves no moment in which the stick is
unguarded: the real `exfilguard-agent` with prevent.removable_writes: block gets a push over real
gRPC, and its fanotify marks (its /proc fdinfo, as the kernel lists them) are looked at all through
the rebuild: while a process carries tagged data, a permission mark on the stick's file system is
there at every look (the new guard takes the previous one's carriers)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.loopstick import LoopStick
from protos import exfilguard_pb2 as pb
from tests.agent.fake_collector import FakeCollector
from tests.e2e.harness import wait_for
from tests.prevent.carrier import carrying, perm_marked

pytestmark = pytest.mark.root

AGENT = str(Path(sys.executable).parent / "exfilguard-agent")


@pytest.fixture
def server() -> Iterator[FakeCollector]:
    fake = FakeCollector().start()
    yield fake
    fake.stop()


def test_a_rebuild_leaves_the_stick_guarded_throughout(
        tmp_path: Path, server: FakeCollector, loop_stick: Callable[..., LoopStick]) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "customers.db").write_bytes(os.urandom(10_000))
    more = tmp_path / "more"
    more.mkdir()
    stick = loop_stick(label=f"RB{os.getpid() % 10000}", serial=f"EGRB{os.getpid()}")
    point = stick.mount()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"collector: {server.address}\nstate_dir: {tmp_path / 'state'}\nreconnect_max_seconds: 0.5\n"
        f"tags:\n  {db}: [database]\nsensors: {{fanotify: 'off'}}\nprevent: {{removable_writes: block}}\n")
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([AGENT, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: f"guarding writes to {point}" in log.read_text(), 60, "the agent to guard the stick",
                 diagnose=log.read_text)
        wait_for(lambda: len(server.received.hellos) >= 1, 30, "the agent to connect", diagnose=log.read_text)
        # a process of another session carries tagged data: the sticks are armed for it
        # (agent/prevent/arming.py), and stay armed through the rebuild (its carriers handed over)
        with carrying(db / "customers.db"):
            wait_for(lambda: perm_marked(agent.pid, point) is True, 15, "the sticks to be armed")
            server.push_config(pb.AgentConfig(version="v1", yaml=f"tags:\n  {more}: [other]\n"))
            looks = unguarded = 0
            while "sensors rebuilt" not in log.read_text():
                seen = perm_marked(agent.pid, point)
                looks += seen is not None
                unguarded += seen is False
                assert agent.poll() is None, log.read_text()
                if looks > 200_000:
                    pytest.fail("the push was not applied: " + log.read_text()[-2000:])
            assert looks > 0
            assert unguarded == 0, f"{unguarded} of {looks} looks found the stick unguarded"
            assert perm_marked(agent.pid, point)
            assert log.read_text().count(f"guarding writes to {point}") >= 2  # the new guard took over
    finally:
        agent.kill()
        agent.wait(10)
