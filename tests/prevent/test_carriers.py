"""Carriers (agent/prevent/arming.py) with real processes: one counts while it lives, a gone one
while a process of its group lives, and one forgotten at the bound keeps the sticks armed for the
time its read counts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.prevent import arming
from agent.prevent.arming import Carriers
from agent.prevent.decide import RECENT_SECONDS
from agent.prevent.procs import family as procs_family
from tests.e2e.harness import wait_for


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by the test, killed after it."""
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _never_holds(_paths: list[str]) -> bool:
    return False


def test_a_carrier_counts_while_it_or_its_group_lives(procs: list[subprocess.Popen[bytes]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arming, "GONE_SECONDS", 0.0)  # its lingering: the next test
    carriers = Carriers(os.getpid(), None, _never_holds)
    assert not carriers.alive()
    alone = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group of its own
    procs.append(alone)
    carriers.note(alone.pid)
    assert carriers.alive()
    alone.kill()
    alone.wait(10)
    assert not carriers.alive()  # gone, and its group with it: forgotten
    assert carriers.count() == 0
    # a shell leading a group with a child in it: the shell read, died; the child lives on
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    procs.append(shell)
    wait_for(lambda: len(_members(shell.pid)) == 2, 15, "the shell's child to start")
    carriers.note(shell.pid)
    shell.kill()
    shell.wait(10)
    assert arming.group_alive(shell.pid)
    assert carriers.alive()
    os.killpg(shell.pid, signal.SIGKILL)
    wait_for(lambda: not arming.group_alive(shell.pid), 15, "the group to end")
    assert not carriers.alive()


def test_a_gone_carrier_counts_a_few_seconds_more(procs: list[subprocess.Popen[bytes]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # what it wrote may not be known as derived yet: the sticks stay armed meanwhile
    monkeypatch.setattr(arming, "GONE_SECONDS", 1.0)
    carriers = Carriers(os.getpid(), None, _never_holds)
    alone = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.append(alone)
    carriers.note(alone.pid)
    alone.kill()
    alone.wait(10)
    found_gone = time.time()
    assert carriers.alive()
    wait_for(lambda: not carriers.alive(), 15, "the gone carrier to stop counting")
    assert time.time() - found_gone >= 1.0
    assert carriers.count() == 0


def _members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if (family := procs_family(pid)) is not None and family[1] == pgid]


def test_one_forgotten_at_the_bound_keeps_the_sticks_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arming, "MAX_CARRIERS", 2)
    monkeypatch.setattr(arming, "GONE_SECONDS", 0.0)
    carriers = Carriers(os.getpid(), None, _never_holds)
    for pid in (999_991, 999_992, 999_993):  # gone (no such processes): only the bound counts
        carriers.note(pid)
    assert carriers.count() == 2
    assert carriers.alive()
    carriers.dropped_at -= RECENT_SECONDS + 1
    assert not carriers.alive()
