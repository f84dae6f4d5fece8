"""The kernel's fork notifications name a child that forked without an exec and was gone
before anything read /proc (rsync's receiver): by its parent, inferred, never by a process
that took a reused pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.sensors import procinfo
from agent.sensors.forks import ForkWatch
from protos import exfilguard_pb2 as pb

pytestmark = pytest.mark.root

FORKER = "import os, sys\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n" \
         "print(pid, flush=True)\nsys.stdin.read()\n"


@pytest.fixture
def watch() -> Iterator[ForkWatch]:
    forks = ForkWatch()
    assert forks.start(), "root may subscribe to the process connector"
    yield forks
    forks.stop()


def _gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_child_gone_unseen_is_named_by_its_parent_from_the_fork_notice(watch: ForkWatch) -> None:
    parent = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert procinfo.read_proc(child) is None  # exited and reaped before anyone looked
        deadline = time.monotonic() + 10
        while watch.parent_of(child)[0] != parent.pid:
            assert time.monotonic() < deadline, "the fork was never heard of"
            time.sleep(0.01)
        assert procinfo.ProcessCache().lookup(child) is None  # without the notice: nothing to go by
        cache = procinfo.ProcessCache()
        cache.forks = watch.parent_of
        info = cache.lookup(child)
        assert info is not None and info.inherited
        assert (info.pid, info.ppid, info.executable, info.uid) == (
            child, parent.pid, os.path.realpath(sys.executable), os.getuid())
        event = pb.Event()
        procinfo.describe(event, info, procinfo.EXACT, child)
        assert event.exfilguard.attribution == procinfo.INFERRED  # never exact: a guess from its parent
    finally:
        parent.communicate("")
    assert watch.seen >= 1


def test_a_parent_whose_pid_was_forked_again_names_nothing() -> None:
    """The child's parent pid now belongs to a process forked after the child (order 9 > 5):
    that process is not the parent, and no name is better than a wrong one."""
    child, parent = _gone_pid(), os.getpid()
    notices = {child: (parent, 5), parent: (1, 9)}
    cache = procinfo.ProcessCache()
    cache.forks = lambda pid: notices.get(pid, (0, 0))
    assert cache.lookup(child) is None
    notices[parent] = (1, 3)  # forked before the child: the same process
    named = cache.lookup(child)
    assert named is not None and named.inherited and named.ppid == parent
