"""Real stick, real copies: udev identity, mounts, exact attribution, copies and archives.

Each test runs the sensors (build_sensors) with a plain list-appending emit, makes a
loop-device USB stick through systemd-udevd, and uses real programs (cp, rsync, tar, a
Python script) on a real tagged tree.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.helpers import wait_for
from tests.sensors.recorder import Mapping, Running

pytestmark = pytest.mark.root

TAGS = ["database", "crown-jewels"]


def _tree(root: Path, files: int = 6) -> list[Path]:
    (root / "customers").mkdir(parents=True)
    made = []
    for i in range(files):
        path = root / "customers" / f"cust{i}.csv"
        path.write_bytes(os.urandom(3000 + 1000 * i))  # distinct sizes and contents
        made.append(path)
    return made


@pytest.fixture
def tagged(tmp_path: Path) -> Iterator[tuple[Path, list[Path]]]:
    root = tmp_path / "srv-db"
    yield root, _tree(root)


def _config(root: Path, **sensors: Any) -> AgentConfig:
    settings = SensorSettings.model_validate({"mass_read_files": 4, **sensors})
    return AgentConfig(tags={str(root): TAGS}, sensors=settings)


def _label(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 100000}"


def _serial(prefix: str) -> str:
    return f"EG{prefix}{os.getpid()}"


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _named(event: Mapping, name: str, exe: str) -> None:
    """A process that exits at once (cp, tar) may be gone before /proc is read: then the
    event says so (attribution inferred/none) and carries what the kernel still told
    (its pid, and the program it executed)."""
    assert event.get("process.executable", exe) == exe
    assert event.get("process.name", name) == name
    if event["exfilguard.attribution"] == "exact":
        assert event["process.executable"] == exe
        assert event["user.name"] == "root"
    else:
        assert event["exfilguard.attribution"] in {"inferred", "none"}


# Once in a clean-clone CI run the cp of the staged zip was identified by fingerprint alone, not
# also by its process (cp's read of the derived zip not counted before its write); cause not found.
@pytest.mark.flaky(reruns=1)
def test_stick_identity_mount_copies_and_detach(loop_stick: Any, tagged: tuple[Path, list[Path]]) -> None:
    root, files = tagged
    stick: LoopStick = loop_stick(label=_label("EGA"), serial=_serial("A"), vendor="Kingston",
                                  model="DataTraveler_3.0", vendor_id="0951", product_id="1666")
    with Running(_config(root)) as run:
        assert "fanotify" in [s.name for s in run.sensors], "root must get exact attribution"
        events = run.events
        stick.plug()
        attach = events.wait_for(events.action("device.attach", {"device.serial": stick.serial}))[0]
        assert attach["device.vendor"] == "Kingston"
        assert attach["device.model"] == "DataTraveler 3.0"
        assert (attach["device.vendor_id"], attach["device.product_id"]) == ("0951", "1666")
        assert attach["device.bus"] == "usb"
        assert attach["device.removable"] is True
        assert attach["device.size"] == stick.size_mib << 20
        assert attach["device.name"] == stick.device

        point = str(stick.mount())
        mount = events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))[0]
        assert mount["device.serial"] == stick.serial
        assert mount["exfilguard.mount.fs_type"] == "ext4"
        assert mount["exfilguard.mount.label"] == stick.label
        assert len(mount["exfilguard.mount.uuid"]) == 36
        assert "exfilguard.mount.read_only" in mount
        assert mount["exfilguard.mount.read_only"] is False

        # cp: exact pid, write and copy by fingerprint and lineage
        cp = subprocess.Popen(["cp", str(files[0]), point])
        assert cp.wait(timeout=30) == 0
        dest0 = f"{point}/{files[0].name}"
        write = events.wait_for(events.action("file.write", {"file.path": dest0}))[0]
        assert write["file.size"] == files[0].stat().st_size
        assert write["device.serial"] == stick.serial
        assert write["exfilguard.mount.point"] == point
        assert write["process.pid"] == cp.pid  # from the kernel, always exact
        _named(write, "cp", "/usr/bin/cp")
        copy = events.wait_for(events.action("file.copy", {"file.path": dest0}))[0]
        assert copy["exfilguard.source.path"] == str(files[0])
        assert copy["exfilguard.source.tags"] == TAGS
        assert set(copy["exfilguard.copy.method"]) >= {"fingerprint"}
        assert copy["tags"] == TAGS
        assert copy["device.serial"] == stick.serial
        assert copy["process.pid"] == write["process.pid"]

        # rsync: writes a temp file and renames it; the copy is reported under the final name
        subprocess.run(["rsync", str(files[1]), point + "/"], check=True)
        dest1 = f"{point}/{files[1].name}"
        copy = events.wait_for(events.action("file.copy", {"file.path": dest1}))[0]
        assert copy["exfilguard.source.path"] == str(files[1])
        assert "fingerprint" in copy["exfilguard.copy.method"]

        # from another mount namespace (as under a hardened unit, or a user's own namespace):
        # the stick's mount there is a copy, so only a mark on its file system sees the write
        # (the writer lives on until its write is seen: one gone before the agent reads /proc
        # is known in part, inferred, which a loaded machine makes a race)
        other_ns = f"{point}/other-namespace.dat"
        copier = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable,
                                   "-c", "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2]);"
                                   " sys.stdin.read()", str(files[1]), other_ns], stdin=subprocess.PIPE)
        try:
            write = events.wait_for(events.action("file.write", {"file.path": other_ns}))[0]
        finally:
            assert copier.stdin is not None
            copier.stdin.close()
            assert copier.wait(timeout=30) == 0
        assert write["process.pid"] == copier.pid
        assert write["exfilguard.attribution"] == "exact"
        assert write["device.serial"] == stick.serial
        copy = events.wait_for(events.action("file.copy", {"file.path": other_ns}))[0]
        assert copy["exfilguard.source.path"] == str(files[1])

        # renamed on the way: only the content links it to its source
        disguised = f"{point}/holiday.jpg"
        subprocess.run(["cp", str(files[2]), disguised], check=True)
        copy = events.wait_for(events.action("file.copy", {"file.path": disguised}))[0]
        assert copy["exfilguard.source.path"] == str(files[2])
        assert copy["exfilguard.source.sha256"] == copy["file.hash.sha256"]
        assert len(copy["file.hash.sha256"]) == 64

        # a Python script: exact pid, exe, command line and user, also for the tagged reads
        script = textwrap.dedent(f"""
            import shutil, sys, time
            with open("/proc/self/loginuid", "w") as fh:  # as pam_loginuid does at a login
                fh.write("1000")
            sys.stdin.readline()                      # wait until the test knows our pid
            shutil.copyfile({str(files[3])!r}, {point + '/notes.bin'!r})
            sys.stdout.write("done\\n"); sys.stdout.flush()
            sys.stdin.readline()                      # stay alive until the test is done
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
            dest3 = f"{point}/notes.bin"
            copy = events.wait_for(events.action("file.copy", {"file.path": dest3}))[0]
            write = events.wait_for(events.action("file.write", {"file.path": dest3}))[0]
            for event in (write, copy):
                assert event["process.pid"] == proc.pid
                assert event["process.executable"] == os.path.realpath(sys.executable)
                assert "shutil.copyfile" in event["process.command_line"]
                assert event["user.name"] == "root"
                assert event["user.id"] == "0"
                assert event["exfilguard.attribution"] == "exact"
                assert event["device.serial"] == stick.serial
                assert event["exfilguard.login_user.id"] == "1000"  # who logged in, though now root
                assert event.get("exfilguard.login_user.name", "") == _account(1000)
            assert copy["exfilguard.copy.method"] == ["fingerprint", "process"]
            opened = events.wait_for(events.action("file.open", {"file.path": str(files[3]),
                                                                 "process.pid": proc.pid}))[0]
            assert opened["exfilguard.attribution"] == "exact"
            assert opened["tags"] == TAGS
            events.wait_for(events.action("file.read", {"file.path": str(files[3]), "process.pid": proc.pid}))
        finally:
            proc.communicate("bye\n", timeout=10)

        # tar of the whole tree onto the stick: an archive by a process that read tagged files
        tar = subprocess.Popen(["tar", "cf", f"{point}/backup.tar", "-C", str(root), "customers"])
        assert tar.wait(timeout=30) == 0
        archive = events.wait_for(events.action("file.archive", {"file.path": f"{point}/backup.tar"}))[0]
        assert archive["process.pid"] == tar.pid
        _named(archive, "tar", "/usr/bin/tar")
        assert archive["exfilguard.copy.files_read"] == len(files)
        assert archive["tags"] == TAGS
        copy = events.wait_for(events.action("file.copy", {"file.path": f"{point}/backup.tar"}))[0]
        # its members are the tagged files: named one by one, never the directory
        assert copy["exfilguard.copy.method"] == ["fingerprint", "process"]
        assert copy["exfilguard.copy.identified_by"] == "member"
        assert copy["exfilguard.content.format"] == "tar"
        assert copy["exfilguard.copy.members_total"] == len(files)
        assert sorted(copy["exfilguard.copy.sources"]) == sorted(map(str, files))
        assert {m["name"] for m in copy["exfilguard.copy.members"]} == {f"customers/{f.name}" for f in files}
        assert copy["exfilguard.copy.files_read"] == len(files)
        assert copy["exfilguard.source.path"] in map(str, files)  # a file, never the directory
        assert copy["exfilguard.copy.bytes_read"] == sum(f.stat().st_size for f in files)  # lineage too
        mass = events.wait_for(events.action("file.mass_read", {"process.pid": archive["process.pid"]}))[0]
        assert mass["exfilguard.count"] >= 4

        # staged first: zip builds an archive somewhere innocent, later copied to the stick renamed
        staged = root.parent / "Downloads" / "stage.zip"
        staged.parent.mkdir()
        zipper = subprocess.Popen(["zip", "-q", "-r", str(staged), "customers"], cwd=root)
        assert zipper.wait(timeout=30) == 0
        archive = events.wait_for(events.action("file.archive", {"file.path": str(staged)}))[0]
        assert archive["process.pid"] == zipper.pid
        assert archive["exfilguard.copy.files_read"] == len(files)
        subprocess.run(["cp", str(staged), f"{point}/photos.dat"], check=True)
        copy = events.wait_for(events.action("file.copy", {"file.path": f"{point}/photos.dat"}))[0]
        # the copy equals the staged zip (a derived file); its members name the tagged sources
        assert copy["exfilguard.source.path"] in map(str, files)
        assert copy["exfilguard.copy.method"] == ["fingerprint", "process"]  # cp read the derived zip
        assert copy["exfilguard.copy.identified_by"] == "member"
        assert sorted(copy["exfilguard.copy.sources"]) == sorted(map(str, files))
        assert copy["tags"] == TAGS

        # every write on the stick was reported, each once
        written = sorted(e["file.path"] for e in events.matching(events.action("file.write"))
                         if e["file.path"].startswith(point + "/"))  # other sticks may be in use
        assert written == sorted([dest0, dest1, other_ns, disguised, f"{point}/notes.bin",
                                  f"{point}/backup.tar", f"{point}/photos.dat"])

        stick.unmount()
        events.wait_for(events.action("device.unmount", {"exfilguard.mount.point": point,
                                                         "device.serial": stick.serial}))
        # no file system at all: writing the raw device is seen (from its write counter)
        dd = subprocess.Popen(["dd", "if=/dev/zero", f"of={stick.device}", "bs=4096", "count=64",
                               "oflag=direct", "conv=notrunc", "status=none"])
        assert dd.wait(timeout=30) == 0
        raw = events.wait_for(events.action("device.write", {"device.serial": stick.serial}))[0]
        assert raw["device.name"] == stick.device

        def raw_writes() -> list[Mapping]:
            return events.matching(events.action("device.write", {"device.serial": stick.serial}))

        # the counter is polled each second: a dd slowed by load spans polls, one event each
        wait_for(lambda: sum(e["exfilguard.count"] for e in raw_writes()) >= 64 * 4096,
                 timeout=15, what="dd's 256 KiB counted")
        # each names dd: the unmount's own flush, which reaches the device after the mount has
        # left the mount table, is no raw write of its own
        assert {e["process.pid"] for e in raw_writes()} == {dd.pid}
        stick.unplug()
        events.wait_for(events.action("device.detach", {"device.serial": stick.serial}))


def test_present_at_start_and_inotify_only(loop_stick: Any, tagged: tuple[Path, list[Path]]) -> None:
    """A stick already mounted when the agent starts is reported; without fanotify, writes
    and copies still are (attribution best effort), and tagged paths report create/rename/delete."""
    root, files = tagged
    stick: LoopStick = loop_stick(label=_label("EGB"), serial=_serial("B"))
    stick.plug()
    point = str(stick.mount())
    with Running(_config(root, fanotify="off")) as run:
        assert "fanotify" not in [s.name for s in run.sensors]
        events = run.events
        attach = events.wait_for(events.action("device.attach", {"device.serial": stick.serial}))[0]
        assert attach["event.reason"] == "present at agent start"
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": point}))
        inventory = events.wait_for(events.action("agent.inventory"))[0]
        counts = {i["tag"]: i["files"] for i in inventory["exfilguard.inventory"]}
        assert counts == dict.fromkeys(TAGS, len(files))

        subprocess.run(["cp", str(files[4]), f"{point}/renamed.dat"], check=True)
        copy = events.wait_for(events.action("file.copy", {"file.path": f"{point}/renamed.dat"}))[0]
        assert copy["exfilguard.copy.method"] == ["fingerprint"]
        assert copy["exfilguard.source.path"] == str(files[4])
        assert copy["exfilguard.attribution"] in {"inferred", "none"}

        new = root / "customers" / "new.csv"
        new.write_bytes(b"x" * 10)
        events.wait_for(events.action("file.create", {"file.path": str(new)}))
        events.wait_for(events.action("file.modify", {"file.path": str(new)}))
        # the inventory follows: one file more
        events.wait_for(lambda e: e.get("event.action") == "agent.inventory"
                        and e["exfilguard.inventory"][0].get("files", 0) == len(files) + 1)
        new.rename(root / "customers" / "newer.csv")
        moved = events.wait_for(events.action("file.rename", {"file.path": str(new)}))[0]
        assert moved["file.target_path"] == str(root / "customers" / "newer.csv")
        assert moved["tags"] == TAGS
        (root / "customers" / "newer.csv").unlink()
        events.wait_for(events.action("file.delete", {"file.path": str(root / "customers" / "newer.csv")}))
        # the agent's own hashing of cust4.csv (to compare it with the copy) is not a user's read
        reads = events.matching(events.action("file.open", {"file.path": str(files[4])}))
        assert len(reads) == 1


def _gap(event: Mapping) -> bool:
    return event.get("event.action") == "agent.gap" and event.get("exfilguard.gap.reason") == "queue_overflow"


def test_inotify_overflow_is_a_gap_then_rescan(tmp_path: Path) -> None:
    """A kernel queue overflow is reported as agent.gap and the rescan brings the inventory back."""
    if os.geteuid() != 0:
        pytest.skip("needs root to lower fs.inotify.max_queued_events")
    root = tmp_path / "burst"
    root.mkdir()
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    knob.write_text("4\n")  # read when the inotify instance is created: restore right after
    try:
        run = Running(AgentConfig(tags={str(root): ["burst"]}, sensors=SensorSettings(fanotify="off")))
        run.__enter__()
    finally:
        knob.write_text(saved)
    try:
        # one process, thousands of events faster than the reader thread drains 4 slots
        subprocess.run(["touch", *(f"f{i}" for i in range(1, 2001))], cwd=root, check=True)
        gap = run.events.wait_for(_gap)[0]
        assert gap["exfilguard.attribution"] == "none"
        assert "lost" in gap["event.reason"]
        run.events.wait_for(lambda e: e.get("event.action") == "agent.inventory"
                            and e["exfilguard.inventory"][0].get("files", 0) == 2000)
    finally:
        run.__exit__(None, None, None)


def test_new_subdirectories_are_watched_with_exact_attribution(tmp_path: Path) -> None:
    """A directory made after start is watched (inotify) and marked (fanotify): a read in it
    names the reader exactly."""
    if os.geteuid() != 0:
        pytest.skip("needs root for fanotify")
    root = tmp_path / "projects"
    root.mkdir()
    with Running(_config(root)) as run:
        events = run.events
        deeper = root / "new" / "deeper"
        deeper.mkdir(parents=True)
        events.wait_for(events.action("file.create", {"file.path": str(deeper), "file.type": "dir"}))
        secret = deeper / "plan.txt"
        secret.write_text("the plan")
        events.wait_for(events.action("file.create", {"file.path": str(secret)}))
        reader = subprocess.Popen([sys.executable, "-c", f"open({str(secret)!r}).read(); input()"],
                                  stdin=subprocess.PIPE, text=True)
        try:
            opened = events.wait_for(events.action("file.open", {"file.path": str(secret),
                                                                 "process.pid": reader.pid}))[0]
            assert opened["exfilguard.attribution"] == "exact"
            assert opened["process.executable"] == os.path.realpath(sys.executable)
            assert opened["tags"] == TAGS
        finally:
            reader.communicate("\n", timeout=10)
