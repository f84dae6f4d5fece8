"""A tagged file read by another name: a hard link (made before the agent started, or while it
runs), a bind mount of the tagged tree (in this mount namespace and in another), an overlay
over it, /proc/PID/root.

The sensors (build_sensors) run with a plain list-appending emit against a real tagged tree, a
loop-device stick and real programs (ln, cat, tar, gzip, openssl, mount --bind, overlay, unshare).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.sensors.recorder import Mapping, Recorder, Running

pytestmark = pytest.mark.root

TAGS = ["database", "crown-jewels"]


@pytest.fixture
def trees(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A tagged tree, an untagged one and a home, all on one file system (hard links need it)."""
    root, plain, home = tmp_path / "srv-db", tmp_path / "photos", tmp_path / "home"
    (root / "customers").mkdir(parents=True)
    for i in range(4):
        (root / "customers" / f"cust{i}.csv").write_bytes(os.urandom(40_000 + 1000 * i))
    plain.mkdir()
    (plain / "img0.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(30_000))
    home.mkdir()
    yield root, plain, home


def _config(root: Path) -> AgentConfig:
    return AgentConfig(tags={str(root): TAGS}, sensors=SensorSettings.model_validate({"mass_read_files": 50}))


def _read_via(events: Recorder, via: Path | str, source: Path, after: int) -> Mapping:
    """The file.read of `source` by the name `via`, naming both."""
    read = events.wait_for(events.action("file.read", {"file.path": str(via)}), after=after)[0]
    assert read["exfilguard.source.path"] == str(source)
    assert read["exfilguard.source.tags"] == TAGS
    assert read["tags"] == TAGS
    # the pid is the kernel's; a `cat` gone before /proc was read is named in part (inferred)
    assert read["exfilguard.attribution"] in {"exact", "inferred"}
    return read


def _cat(path: Path | str) -> int:
    done = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL)
    assert done.wait(timeout=30) == 0
    return done.pid


def test_a_hard_link_read_is_a_read_of_the_tagged_file(trees: tuple[Path, Path, Path]) -> None:
    root, plain, home = trees
    files = sorted((root / "customers").iterdir())
    before = home / "notes.txt"
    os.link(files[0], before)  # made before the agent started: its inode is marked all the same
    innocent = home / "img-copy.jpg"
    os.link(plain / "img0.jpg", innocent)
    with Running(_config(root)) as run:
        events = run.events
        start = events.mark()
        pid = _cat(before)
        assert _read_via(events, before, files[0], start)["process.pid"] == pid
        # made while the agent runs, in a directory nobody marked
        during = home / "later" / "todo.txt"
        during.parent.mkdir()
        subprocess.run(["ln", str(files[1]), str(during)], check=True)
        _cat(during)
        _read_via(events, during, files[1], start)
        # a file made in the tagged tree after start, then linked out (written by another process:
        # fanotify does not report the agent's own, here the test's)
        fresh = root / "customers" / "new.csv"
        subprocess.run(["bash", "-c", f'head -c 20000 /dev/urandom > "{fresh}"'], check=True)
        events.wait_for(events.action("file.modify", {"file.path": str(fresh)}), after=start)
        out = home / "new-link.csv"
        os.link(fresh, out)
        _cat(out)
        _read_via(events, out, fresh, start)
        # moved out of the tree: its data is still the tagged file's
        moved = home / "moved.csv"
        fresh.rename(moved)
        _cat(moved)
        _read_via(events, moved, fresh, start)
        # the tagged name itself: an ordinary tagged read, no second name
        _cat(files[2])
        own = events.wait_for(events.action("file.read", {"file.path": str(files[2])}), after=start)[0]
        assert "exfilguard.source.path" not in own
        # an innocent hard link of an untagged file is nobody's tagged read; `cat` of a tagged
        # name afterwards is the sentinel that every earlier event was handled
        _cat(innocent)
        _cat(files[3])
        events.wait_for(events.action("file.read", {"file.path": str(files[3])}), after=start)
        assert not events.matching(lambda e: str(e.get("file.path", "")).startswith(str(plain))
                                   or e.get("file.path") == str(innocent), start)


@contextlib.contextmanager
def _bound(source: Path, target: Path) -> Iterator[Path]:
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_bind_mount_or_another_namespace_reads_the_tagged_file(trees: tuple[Path, Path, Path]) -> None:
    root, _plain, home = trees
    files = sorted((root / "customers").iterdir())
    with Running(_config(root)) as run, _bound(root, home / "mnt") as bound:
        events = run.events
        start = events.mark()
        via = bound / "customers" / files[0].name
        _cat(via)
        _read_via(events, via, files[0], start)
        # another mount namespace with a bind mount of its own: the kernel names the file as
        # that namespace sees it (or relative to its mount); the inode says which tagged file it is
        inside = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f'mkdir -p /run/eg-links-$$ && mount --bind "{root}" /run/eg-links-$$ && '
             f'cat /run/eg-links-$$/customers/{files[1].name} > /dev/null && echo $$'],
            check=True, capture_output=True, text=True)
        shell = inside.stdout.strip()
        read = events.wait_for(lambda e: e.get("event.action") == "file.read"
                               and e.get("exfilguard.source.path") == str(files[1]), after=start)[0]
        assert read["tags"] == TAGS
        assert read["file.path"] != str(files[1])
        with contextlib.suppress(OSError):
            Path(f"/run/eg-links-{shell}").rmdir()
        # an overlay whose lower layer is the tagged tree, mounted in a namespace of its own (a
        # user namespace lets anyone do so): the read through the overlay opens the tagged file
        for name in ("upper", "work", "merged"):
            (home / name).mkdir()
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f'mount -t overlay eg-links -o lowerdir="{root}",upperdir="{home}/upper",'
                        f'workdir="{home}/work" "{home}/merged" && '
                        f'cat "{home}/merged/customers/{files[3].name}" > /dev/null'], check=True)
        events.wait_for(lambda e: e.get("event.action") == "file.read"
                        and e.get("exfilguard.source.path") == str(files[3]), after=start)
        # /proc/PID/root of a process in this namespace leads to the file by its tagged path
        _cat(f"/proc/{os.getpid()}/root{files[2]}")
        events.wait_for(events.action("file.read", {"file.path": str(files[2])}), after=start)


def _copy_of(events: Recorder, path: str) -> Mapping:
    return events.wait_for(events.action("file.copy", {"file.path": path}), timeout=30)[0]


def _held(events: Recorder, command: str, release: Path, opened: Callable[[Mapping], bool]) -> None:
    """Run a bash pipeline whose middle stage waits for a line on the fifo `release`, and give
    it that line once `opened` was reported: the reader upstream (its output larger than a pipe
    holds) lives until the agent has looked at it. A gzip that exited before the agent read its
    /proc entry is tied to no pipe: on a loaded machine, a race of its own, not this one."""
    after = events.mark()
    proc = subprocess.Popen(["bash", "-c", "set -o pipefail; " + command])
    try:
        events.wait_for(opened, timeout=30, after=after)
    finally:
        with release.open("w") as fh:
            fh.write("go\n")
        assert proc.wait(timeout=60) == 0


def test_a_hard_link_transformed_onto_a_stick_names_the_tagged_source(
        loop_stick: Any, trees: tuple[Path, Path, Path]) -> None:
    """`gzip | openssl enc` of a hard link, `tar cz | openssl enc` and `tar czf` of a directory
    of hard links: lineage ties what lands on the stick to the tagged files (encrypted, no
    content can); an innocent hard link's archive is tied to nothing."""
    root, plain, home = trees
    files = sorted((root / "customers").iterdir())
    for path in files:  # more than a pipe holds, compressed: a reader blocks until released
        path.write_bytes(os.urandom(200_000 + path.stat().st_size))
    stick: LoopStick = loop_stick(label=f"EGL{os.getpid() % 100000}", serial=f"EGLINKS{os.getpid()}")
    stash = home / "stash"
    stash.mkdir()
    for path in files:
        os.link(path, stash / f"{path.stem}.txt")
    release = home / "release"
    os.mkfifo(release)
    wait = f'{{ read -r _ < "{release}"; cat; }}'
    with Running(_config(root)) as run:
        events = run.events
        stick.plug()
        point = str(stick.mount())
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))

        sealed = f"{point}/notes.bin"
        link = stash / f"{files[0].stem}.txt"
        seal = "openssl enc -aes-256-cbc -pbkdf2 -pass pass:x"
        _held(events, f'gzip -c "{link}" | {wait} | {seal} > "{sealed}"', release,
              events.action("file.open", {"file.path": str(link)}))
        copy = _copy_of(events, sealed)
        assert copy["exfilguard.source.path"] == str(files[0])
        assert copy["exfilguard.copy.identified_by"] == "lineage-bytes"
        assert copy["tags"] == TAGS
        assert copy["device.serial"] == stick.serial

        archive = f"{point}/stash.tgz.enc"
        in_stash = f"{stash}/"
        _held(events, f'tar czf - -C "{home}" stash | {wait} | {seal} > "{archive}"', release,
              lambda e: e.get("event.action") == "file.open" and str(e.get("file.path")).startswith(in_stash))
        copy = _copy_of(events, archive)
        assert copy["exfilguard.source.path"] in {str(p) for p in files}
        assert "process" in copy["exfilguard.copy.method"]
        assert copy["exfilguard.copy.files_read"] == len(files)

        # straight onto the stick: the content names the tagged files, and tar's reads are theirs
        tarball = f"{point}/stash.tgz"
        tar = subprocess.Popen(["tar", "czf", tarball, "-C", str(home), "stash"])
        assert tar.wait(timeout=60) == 0
        copy = _copy_of(events, tarball)
        assert copy["exfilguard.source.path"] in {str(p) for p in files}
        reads = events.wait_for(events.action("file.read", {"process.pid": tar.pid}), count=len(files))
        assert {r["exfilguard.source.path"] for r in reads} == {str(p) for p in files}

        # the innocent: an untagged photo's hard link, archived onto the stick
        os.link(plain / "img0.jpg", home / "img0.jpg")
        photos = f"{point}/photos.tgz"
        subprocess.run(["tar", "czf", photos, "-C", str(home), "img0.jpg"], check=True)
        written = events.wait_for(events.action("file.write", {"file.path": photos}), timeout=30)[0]
        assert not written.get("tags")
        assert not events.matching(events.action("file.copy", {"file.path": photos}))


def test_past_max_file_marks_only_linked_files_are_marked_and_a_gap_says_how_many(
        trees: tuple[Path, Path, Path]) -> None:
    root, _plain, home = trees
    files = sorted((root / "customers").iterdir())
    os.link(files[3], home / "kept.txt")  # already has another name: marked past the bound too
    config = AgentConfig(tags={str(root): TAGS}, sensors=SensorSettings.model_validate({"max_file_marks": 2}))
    with Running(config) as run:
        events = run.events
        gap = events.wait_for(events.action("agent.gap", {"exfilguard.gap.reason": "file_marks_full"}))[0]
        assert gap["exfilguard.gap.lost"] == 1  # 4 files: 2 marked, the linked one, 1 left out
        start = events.mark()
        _cat(home / "kept.txt")
        _read_via(events, home / "kept.txt", files[3], start)
