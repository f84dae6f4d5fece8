"""HeldFiles: a written file's descriptor is read instead of its path, only while the path still
names that file; bounded; let go with the file. And the inotify grouper keeps a rename whole."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, Mask, WatchDescriptor
from watchdog.observers.inotify_move_event_grouper import GroupedInotifyEvent, PathedInotifyEvent

from agent.sensors import inotify
from agent.sensors.held import HeldFiles


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def test_a_held_descriptor_is_taken_only_while_the_path_names_its_file(tmp_path: Path) -> None:
    held = HeldFiles()
    first = tmp_path / "a.csv"
    first.write_bytes(b"one")
    fd = _open(first)
    held.hold(str(first), fd)
    os.close(fd)  # the holder keeps its own copy
    taken = held.take(str(first))
    assert taken is not None and os.pread(taken, 10, 0) == b"one"
    os.close(taken)
    assert held.take(str(first)) is None, "taken once: the taker closes it"

    fd = _open(first)
    held.hold(str(first), fd)
    os.close(fd)
    replaced = tmp_path / "b.csv"
    replaced.write_bytes(b"two")
    replaced.rename(first)  # another file under the same name now
    assert held.take(str(first)) is None
    assert len(held) == 0


def test_held_descriptors_are_bounded_aged_and_dropped_with_their_directory(tmp_path: Path) -> None:
    held = HeldFiles(limit=2, max_age=0.2)
    paths = []
    for name in ("a", "b", "c"):
        path = tmp_path / "d" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(name.encode())
        fd = _open(path)
        held.hold(str(path), fd)
        os.close(fd)
        paths.append(path)
    assert len(held) == 2, "past the bound nothing new is held"
    held.drop(str(tmp_path / "d"))
    assert len(held) == 0
    fd = _open(paths[0])
    held.hold(str(paths[0]), fd)
    os.close(fd)
    time.sleep(0.25)
    assert held.take(str(paths[1])) is None and len(held) == 0, "too old: closed at the next look"


def test_the_bound_follows_a_descriptor_limit_lifted_after_it_was_made(tmp_path: Path) -> None:
    # the index (and its HeldFiles) is made before fanotify lifts the soft limit to the hard one
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 64:
        pytest.skip(f"hard descriptor limit {hard} is too low to lift")
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, hard))  # a bound of 2
    try:
        held = HeldFiles(limit=4)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # a bound of 8: the wanted 4
        for name in "abcd":
            path = tmp_path / name
            path.write_bytes(name.encode())
            fd = _open(path)
            held.hold(str(path), fd)
            os.close(fd)
        assert len(held) == 4, "held up to the bound the lifted limit allows"
        held.clear()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _event(mask: Mask, name: bytes, cookie: int = 0) -> PathedInotifyEvent:
    return PathedInotifyEvent(InotifyEvent(WatchDescriptor(1), mask, cookie, name), b"/t/" + name)


def test_the_grouper_pairs_a_rename_and_holds_what_follows_its_first_half() -> None:
    got: list[GroupedInotifyEvent] = []
    done = threading.Event()

    def deliver(item: GroupedInotifyEvent) -> None:
        got.append(item)
        if len(got) == 4:
            done.set()

    grouper = inotify.Grouper(deliver)
    grouper.put_event(_event(InotifyConstants.IN_MOVED_FROM, b"a", 7))
    made = _event(InotifyConstants.IN_CREATE, b"b")
    grouper.put_event(made)
    grouper.flush()
    assert got == [], "a rename's first half waits, and what came after it"
    second = _event(InotifyConstants.IN_MOVED_TO, b"c", 7)
    grouper.put_event(second)
    grouper.flush()
    assert got == [made, (_event(InotifyConstants.IN_MOVED_FROM, b"a", 7), second)]
    # a first half nobody completes goes on alone once MOVE_WAIT has passed (a delete)
    alone, after = _event(InotifyConstants.IN_MOVED_FROM, b"d", 9), _event(InotifyConstants.IN_DELETE, b"e")
    grouper.put_event(alone)
    grouper.put_event(after)
    grouper.flush()
    assert len(got) == 2
    assert done.wait(inotify.MOVE_WAIT + 5.0)
    assert got[2:] == [alone, after]
    grouper.close()


AGENT_WITHOUT_FOWNER = r"""
import os, sys
from agent.sensors.held import own_read, read_by_agent
path = sys.argv[1]
before = os.stat(path)
assert own_read(path, lambda fd: os.read(fd, 100)) == b"tagged rows\n"
after = os.stat(path)
print(after.st_atime_ns != before.st_atime_ns, read_by_agent(after))
"""


def test_the_agents_own_read_of_another_owners_file_is_known_by_the_access_time_it_left(
        tmp_path: Path) -> None:
    """Without CAP_FOWNER (the shipped unit) O_NOATIME is refused on a file of another owner: the
    agent's read moves its access time, and a new tagged directory's look (newdirs.py) must know
    that read for the agent's own, not someone's read before the watch was in place."""
    tagged = tmp_path / "rows.csv"
    tagged.write_bytes(b"tagged rows\n")
    os.utime(tagged, (1_000_000_000, 1_000_000_000))  # an old access time: the read moves it
    os.chown(tagged, 65534, 65534)  # nobody's
    tmp_path.chmod(0o755)
    done = subprocess.run(["setpriv", "--inh-caps=-fowner", "--bounding-set=-fowner", sys.executable, "-c",
                           AGENT_WITHOUT_FOWNER, str(tagged)], capture_output=True, text=True, check=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["True", "True"], done.stderr
