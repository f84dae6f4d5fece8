"""Tagged paths that appear after the agent started, go, and come back (real files, real sensors).

Each test runs build_sensors in-process with a Recorder. Nothing waits a fixed time: every
wait polls the recorded events with a deadline. Reads are made by `cat FILE -`, which opens,
reads and closes FILE and then stays alive reading stdin, so /proc still names it when the
kernel's event is handled (exact attribution, not a race with its exit).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from watchdog.events import DirCreatedEvent, FileCreatedEvent

from agent.sensors.files import FileSensor
from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.sensors.recorder import Mapping, Recorder, Running

pytestmark = pytest.mark.root

TAGS = ["database", "crown-jewels"]


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for fanotify and mounts")


def _fill(directory: Path, count: int, prefix: str = "cust") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        path = directory / f"{prefix}{i}.csv"
        path.write_bytes(os.urandom(2000 + 700 * i))  # distinct sizes and contents
        made.append(path)
    return made


def _counted(tag: str, files: int) -> Callable[[Mapping], bool]:
    def check(event: Mapping) -> bool:
        return event.get("event.action") == "agent.inventory" and any(
            item.get("tag") == tag and item.get("files", 0) == files
            for item in event.get("exfilguard.inventory", []))

    return check


def _config(tags: dict[str, list[str]], fanotify: Literal["auto", "on", "off"] = "auto") -> AgentConfig:
    return AgentConfig(tags=tags, sensors=SensorSettings(fanotify=fanotify))


@contextmanager
def _cat(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["cat", str(path), "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.communicate(b"", timeout=10)


def _read_exactly(events: Recorder, path: Path, tags: list[str]) -> None:
    """`cat` reads `path`: file.open and file.read name it exactly, with the path's tags."""
    with _cat(path) as proc:
        by_cat = {"file.path": str(path), "process.pid": proc.pid}
        opened = events.wait_for(events.action("file.open", by_cat))
        read = events.wait_for(events.action("file.read", by_cat))
        for event in (opened[0], read[0]):
            assert event["exfilguard.attribution"] == "exact"
            assert event["process.executable"] == "/usr/bin/cat"
            assert event["tags"] == tags
            assert event["file.size"] == path.stat().st_size


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(text))


def test_path_made_after_start_is_watched_marked_indexed_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sensors.files")
    root = tmp_path / "srv" / "db"  # not even its parent exists yet
    with Running(_config({str(root): TAGS})) as run:
        events = run.events
        assert "fanotify" in [s.name for s in run.sensors]
        events.wait_for(_counted("database", 0))  # the tag is reported, with nothing under it
        warning = f"tagged path {root} does not exist yet; it will be watched when it appears"
        assert _logged(caplog, warning) == 1

        files = _fill(root / "customers", 3)  # mkdir -p, then files
        events.wait_for(_counted("database", 3))
        events.wait_for(_counted("crown-jewels", 3))
        assert _logged(caplog, f"tagged path {root} appeared: watching ") == 1
        _read_exactly(events, files[1], TAGS)

        # watched from now on: a new file is a file.create and is counted
        later = root / "customers" / "later.csv"
        later.write_bytes(os.urandom(999))
        created = events.wait_for(events.action("file.create", {"file.path": str(later)}))[0]
        assert created["tags"] == TAGS
        events.wait_for(_counted("database", 4))

        # a renamed copy elsewhere is identified by its content (the fingerprint index)
        copy = tmp_path / "Downloads" / "holiday.jpg"
        copy.parent.mkdir()
        subprocess.run(["cp", str(files[2]), str(copy)], check=True)
        index = cast("FileSensor", run.sensor("files")).index
        fd = os.open(copy, os.O_RDONLY)
        try:
            found = index.match(fd, copy.stat().st_size)
        finally:
            os.close(fd)
        assert found is not None and found[0] == str(files[2])


def test_path_made_after_start_without_fanotify(tmp_path: Path) -> None:
    """inotify alone (fanotify off, as without root): the new root reports opens, best effort."""
    root = tmp_path / "srv" / "db"
    with Running(_config({str(root): TAGS}, fanotify="off")) as run:
        events = run.events
        assert "fanotify" not in [s.name for s in run.sensors]
        events.wait_for(_counted("database", 0))
        files = _fill(root, 2)
        events.wait_for(_counted("database", 2))
        with _cat(files[0]):
            opened = events.wait_for(events.action("file.open", {"file.path": str(files[0])}))[0]
            assert opened["tags"] == TAGS
            assert opened["exfilguard.attribution"] in {"inferred", "none"}
            events.wait_for(events.action("file.read", {"file.path": str(files[0])}))


def test_glob_picks_up_a_new_users_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sensors.files")
    home = tmp_path / "home"
    alice = _fill(home / "alice" / "projects" / "secret", 2, "alice")
    (home / "bob" / "projects").mkdir(parents=True)  # bob has projects, no secret ones yet
    pattern = str(home / "*" / "projects" / "secret")
    with Running(_config({pattern: ["source-code"]})) as run:
        events = run.events
        events.wait_for(_counted("source-code", 2))
        assert _logged(caplog, f"tagged path {pattern} does not exist yet") == 0

        carol_dir = home / "carol" / "projects" / "secret"  # a new user: the home made after start
        carol = _fill(carol_dir, 3, "carol")
        events.wait_for(_counted("source-code", 5))
        assert _logged(caplog, f"tagged path {carol_dir} appeared: watching ") == 1
        _read_exactly(events, carol[0], ["source-code"])

        bob = _fill(home / "bob" / "projects" / "secret", 1, "bob")  # one level short before
        events.wait_for(_counted("source-code", 6))
        _read_exactly(events, bob[0], ["source-code"])
        _read_exactly(events, alice[1], ["source-code"])  # the first match still is

        # a directory that does not match the glob is not tagged
        other = _fill(home / "dave" / "projects" / "public", 1, "dave")[0]
        with _cat(other) as proc:
            _read_exactly(events, carol[1], ["source-code"])  # later than dave's read
            assert not events.matching(events.action("file.open", {"process.pid": proc.pid,
                                                                    "file.path": str(other)}))


def test_root_deleted_and_made_again_is_still_watched(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sensors.files")
    root = tmp_path / "srv-db"
    _fill(root / "customers", 3)
    with Running(_config({str(root): TAGS})) as run:
        events = run.events
        events.wait_for(_counted("database", 3))
        for rounds in range(2):
            mark = events.mark()
            shutil.rmtree(root)
            events.wait_for(_counted("database", 0), after=mark)
            events.wait_for(events.action("file.delete", {"file.path": str(root)}), after=mark)
            mark = events.mark()
            files = _fill(root / "customers", 2, f"round{rounds}-")
            events.wait_for(_counted("database", 2), after=mark)
            _read_exactly(events, files[1], TAGS)
            # a subdirectory deleted and made again inside the root is marked again too
            shutil.rmtree(root / "customers")
            again = _fill(root / "customers", 1, f"again{rounds}-")
            events.wait_for(events.action("file.create", {"file.path": str(again[0])}))
            _read_exactly(events, again[0], TAGS)
        assert _logged(caplog, f"tagged path {root} is gone; it will be watched again when it appears") == 2
        assert _logged(caplog, f"tagged path {root} appeared: watching ") == 2


def test_share_mounted_after_start_and_unmounted(tmp_path: Path) -> None:
    """A tagged path on a file system mounted later (nothing changes in the directory under the
    mount point: only the mount table says so), and gone again when it is unmounted."""
    share = tmp_path / "share"
    share.mkdir()
    root = share / "finance"
    with Running(_config({str(root): TAGS})) as run:
        events = run.events
        events.wait_for(_counted("database", 0))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "egshare", str(share)], check=True)
        try:
            files = _fill(root, 2)
            events.wait_for(_counted("database", 2))
            _read_exactly(events, files[0], TAGS)
            mark = events.mark()
        finally:
            subprocess.run(["umount", str(share)], check=True)
        events.wait_for(_counted("database", 0), after=mark)
        # and back: the same path made on the disk under the mount point
        files = _fill(root, 1, "local")
        events.wait_for(_counted("database", 1))
        _read_exactly(events, files[0], TAGS)


def test_copy_from_a_root_made_after_start_onto_a_stick(loop_stick: Any, tmp_path: Path) -> None:
    """The new root's files are in the fingerprint index: a renamed copy onto a stick is a
    file.copy naming its source, by content and by the copying process."""
    root = tmp_path / "restored" / "db"
    stick: LoopStick = loop_stick(label=f"EGN{os.getpid() % 100000}", serial=f"EGNEW{os.getpid()}")
    with Running(_config({str(root): TAGS})) as run:
        events = run.events
        events.wait_for(_counted("database", 0))
        files = _fill(root, 3)
        events.wait_for(_counted("database", 3))
        stick.plug()
        point = str(stick.mount())
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))
        dest = f"{point}/holiday.jpg"
        cp = subprocess.Popen(["cp", str(files[2]), dest])
        assert cp.wait(timeout=30) == 0
        copy = events.wait_for(events.action("file.copy", {"file.path": dest}))[0]
        assert copy["exfilguard.source.path"] == str(files[2])
        assert copy["exfilguard.source.tags"] == TAGS
        assert "fingerprint" in copy["exfilguard.copy.method"]
        assert copy["process.pid"] == cp.pid
        assert copy["device.serial"] == stick.serial


def test_nested_directories_made_at_once_are_each_reported_created_once(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "db"
    root.mkdir(parents=True)
    with Running(_config({str(root): TAGS})) as run:
        events = run.events
        events.wait_for(_counted("database", 0))
        deep = root.joinpath(*[f"level{i}" for i in range(19)])
        subprocess.run(["mkdir", "-p", str(deep)], check=True)  # 19 directories as fast as it goes
        sentinel = deep / "last.csv"
        sentinel.write_bytes(b"x")
        events.wait_for(events.action("file.create", {"file.path": str(sentinel)}))
        made = [str(root.joinpath(*[f"level{i}" for i in range(n + 1)])) for n in range(19)]
        creates = Counter(e["file.path"] for e in events.matching(events.action("file.create"))
                          if str(e["file.path"]).startswith(str(root)))
        assert {path: creates[path] for path in made} == dict.fromkeys(made, 1)
        assert creates[str(sentinel)] == 1
        # What watchdog sends when its walk of a new directory meets the deeper ones again (how
        # often depends on timing): the same paths, the same directories, are no news.
        sensor = cast("FileSensor", run.sensor("files"))
        mark = events.mark()
        for path in made[3:]:
            sensor._tagged_event(DirCreatedEvent(path))
        sensor._tagged_event(FileCreatedEvent(str(sentinel)))
        assert not events.matching(events.action("file.create"), after=mark)
