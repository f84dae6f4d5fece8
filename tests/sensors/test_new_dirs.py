"""New directories inside a tagged tree, made and used faster than the agent can mark them.

fanotify sees a tagged file's reads only once its directory is marked; a burst of new
directories (a restore, a `cp -r` into the tree, then a reader) outruns the marks. Every read
must then be reported exactly, or counted in an `agent.gap` (reason `unwatched_window`) naming
the directory: never silent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.sensors.newdirs import NewDirectories
from agent.sensors.tags import TagMap
from common.agentconfig import AgentConfig, SensorSettings
from protos import exfilguard_pb2 as pb
from tests.sensors.recorder import Mapping, Running

pytestmark = pytest.mark.root

# Write files into 40 new directories, then read them all back: every read comes long after its
# write (the access time shows it), and most come before a busy agent has marked the directory.
BURST = r"""
import os, sys
top, count = sys.argv[1], int(sys.argv[2])
paths = []
for i in range(count):
    directory = os.path.join(top, f"d{i // 50}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"f{i}.csv")
    with open(path, "w") as fh:
        fh.write(f"{i},customer {i},secret\n")
    paths.append(path)
for path in paths:
    with open(path) as fh:
        fh.read()
"""


def _gap(event: Mapping) -> bool:
    return event.get("event.action") == "agent.gap" \
        and event.get("exfilguard.gap.reason") == "unwatched_window"


def test_reads_in_new_directories_are_reported_or_counted_in_a_gap(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for fanotify")
    root = tmp_path / "db"
    root.mkdir()
    (root / "seed.csv").write_text("1,seed\n")
    count = 2000
    with Running(AgentConfig(tags={str(root): ["database"]}, sensors=SensorSettings())) as run:
        events = run.events
        run.events.wait_for(events.action("agent.inventory"))
        top = root / "restored"
        subprocess.run([sys.executable, "-c", BURST, str(top), str(count)], check=True, timeout=60)
        wanted = {str(top / f"d{i // 50}" / f"f{i}.csv") for i in range(count)}

        def accounted() -> tuple[int, int]:
            read = {e["file.path"] for e in events.matching(events.action("file.read"))} & wanted
            return len(read), sum(int(g.get("exfilguard.gap.lost", 0)) for g in events.matching(_gap))

        deadline = time.monotonic() + 40
        while sum(accounted()) < count and time.monotonic() < deadline:
            run.sensor("fanotify").new_dirs.stop()  # type: ignore[attr-defined]  # report what is pending
            time.sleep(0.1)
        reads, lost = accounted()
        assert reads + lost >= count, f"{reads} reads reported, {lost} counted in gaps, of {count}"
        for gap in events.matching(_gap):
            assert gap["file.path"].startswith(str(top) + "/d")
            assert gap["tags"] == ["database"]
            assert gap["exfilguard.attribution"] == "none"
            assert gap["exfilguard.gap.first"] <= gap["exfilguard.gap.last"]
            assert "before the agent's watch" in gap["event.reason"]
        # folded: one gap per ten seconds at most, not one per directory
        assert len(events.matching(_gap)) <= 4


def test_a_restore_into_the_tree_read_by_nobody_is_no_gap(tmp_path: Path) -> None:
    """tar x, rsync -a and cp -rp set old modification times, and the agent reads what
    appears (to fingerprint it), and a restored directory renamed inside the tree keeps its
    mark: none of it is a read before a mark."""
    if os.geteuid() != 0:
        pytest.skip("needs root for fanotify")
    source = tmp_path / "backup" / "a"
    (source / "b").mkdir(parents=True)
    for i in range(100):
        (source / f"f{i}.csv").write_text(f"{i},customer {i}\n")
        (source / "b" / f"g{i}.csv").write_text(f"{i},order {i}\n")
    subprocess.run(["tar", "cf", str(tmp_path / "backup.tar"), "-C", str(source.parent), "a"], check=True)
    root = tmp_path / "db"
    root.mkdir()
    with Running(AgentConfig(tags={str(root): ["database"]}, sensors=SensorSettings())) as run:
        run.events.wait_for(run.events.action("agent.inventory"))
        for k in range(2):
            subprocess.run(["tar", "xf", str(tmp_path / "backup.tar"), "-C", str(root)], check=True)
            subprocess.run(["rsync", "-a", f"{source}/", f"{root}/rsync{k}/"], check=True)
            subprocess.run(["cp", "-rp", str(source), str(root / f"cp{k}")], check=True)
            (root / "a").rename(root / f"restored{k}")
        want = 2 * 3 * 200  # files: tar, rsync, cp, each with b/
        run.events.wait_for(lambda e: e.get("event.action") == "agent.inventory"
                            and e["exfilguard.inventory"][0].get("files", 0) >= want, timeout=30)
        catalog = run.sensor("content")
        assert catalog.wait_ready(30)  # type: ignore[attr-defined]  # the agent has read them all
        (root / "restored0").rename(root / "renamed")  # a marked directory, renamed
        run.events.wait_for(run.events.action("file.rename", {"file.target_path": str(root / "renamed")}))
        run.sensor("fanotify").new_dirs.stop()  # type: ignore[attr-defined]  # report what is pending
        assert run.events.matching(_gap) == []


def test_a_directory_made_again_under_its_path_is_marked_again(tmp_path: Path) -> None:
    """Deleted and made again, a directory often gets its inode number back (ext4 and tmpfs
    hand the freed number out again at once): it is a new inode without a mark, and is marked;
    the same directory told of twice (inotify and fanotify both) is marked once."""
    customers = tmp_path / "db" / "customers"
    customers.mkdir(parents=True)
    marked: list[str] = []
    new_dirs = NewDirectories(TagMap({str(tmp_path / "db"): ["database"]}), lambda _event: None,
                              marked.append, system_devs=set)
    new_dirs.appeared(str(customers), reported=True)
    new_dirs.appeared(str(customers), reported=True)
    assert marked == [str(customers)]
    customers.rmdir()
    customers.mkdir()
    new_dirs.appeared(str(customers), reported=True)
    assert marked == [str(customers), str(customers)]


def test_a_directory_made_just_after_its_tree_was_marked_is_looked_into(tmp_path: Path) -> None:
    """File systems stamp a new inode with a clock a tick behind the precise one: a directory
    made at once after the tree's marking began showed a birth time before it, and was taken as
    marked by that marking's walk (which had passed its parent already). A file read in it
    before the directory was marked must be counted in a gap, not go unreported."""
    root = tmp_path / "db"
    root.mkdir()
    gaps: list[pb.Event] = []
    new_dirs = NewDirectories(TagMap({str(root): ["database"]}), gaps.append, lambda _path: None,
                              system_devs=lambda: {root.stat().st_dev})  # its writes are seen
    new_dirs.tree_marking(str(root))  # the walk that follows finds nothing below the root
    made = root / "customers"
    made.mkdir()
    written = made / "a.csv"
    written.write_text("1,alice\n")
    # read a clock tick later, so the read leaves an access time after the write's change time
    changed = written.stat().st_ctime
    deadline = time.monotonic() + 2.0
    while time.time() < changed + 0.05 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written.read_text() == "1,alice\n"
    new_dirs.written(str(written))  # fanotify's file-system mark reports the write: marked now
    assert [(g.exfilguard.gap.reason, g.exfilguard.gap.lost, g.file.path) for g in gaps] == \
        [("unwatched_window", 1, str(made))]
