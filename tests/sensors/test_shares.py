"""Egress media beyond USB sticks: a network share (sshfs against a local sshd) is removable
media: its mount is reported, copies onto it are attributed and identified like copies onto a
stick, and the shipped pack raises the same alerts, naming the share. Mounts of other egress
types and GVfs directories are classified from the mount table."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.sensors.media import RemovableMedia, describe_udev
from agent.sensors.mounts import MountTable
from collector.policy import loader
from collector.policy.replay import engine_for, replay
from common.agentconfig import AgentConfig, Removable, SensorSettings
from common.ecstime import ecs_epoch
from tests.policy.helpers import after_hours
from tests.sensors.recorder import Mapping, Recorder, Running
from tests.shares import SshShare, missing_tools, readable_by_all

PACK = Path(__file__).resolve().parents[2] / "policies"
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def share(tmp_path: Path) -> Iterator[SshShare]:
    if not IS_ROOT:
        pytest.skip("needs root: sshd, FUSE mounts of another user, fanotify")
    if missing_tools():
        pytest.skip(f"not installed: {', '.join(missing_tools())} (run scripts/bootstrap)")
    with SshShare(tmp_path / "sshd") as running:
        yield running


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory another user (nobody) may read: pytest's tmp_path is root's only. Asked for
    before the share, so that the share is unmounted first."""
    where = Path("/tmp") / f"eg-share-{os.getpid()}-{tmp_path.name}"
    where.mkdir(mode=0o755)
    yield where
    subprocess.run(["rm", "-rf", str(where)], check=False)


def _files(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True)
    for i, name in enumerate(names):
        (root / name).write_bytes(os.urandom(2000 + 700 * i))


def _copy_as_nobody(what: Path, where: Path) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", "cp", "-r", str(what), str(where)], check=True)


def _ours(events: list[Mapping], world: Path) -> list[Mapping]:
    """The events about this test's files and share: other sticks may come and go on the machine
    meanwhile (the device sensor reports every removable device), and the tag inventory."""
    return [e for e in events if str(e.get("file.path", "")).startswith(f"{world}/")
            or e["event.action"] == "agent.inventory"]


def _alerts(events: list[Mapping]) -> list[dict[str, Any]]:
    engine = engine_for(loader.load([PACK]), timezone="UTC", suppression=0.0)
    return [a.to_json() for a in replay(engine, events)]


@pytest.mark.root
def test_copies_onto_a_network_share_are_copies_to_removable_media(world: Path, share: SshShare) -> None:
    db = world / "srv-db"
    _files(db / "customers", ["a.csv", "b.csv", "c.csv"])
    _files(world / "holiday", ["beach.jpg", "hills.jpg"])
    readable_by_all(world)
    config = AgentConfig(tags={str(db): ["database"]}, sensors=SensorSettings(fanotify="on"))
    with Running(config) as run:
        point = share.mount(world / "mnt")
        mount = Recorder.action("device.mount", {"exfilguard.mount.point": str(point)})
        mounted = run.events.wait_for(mount)[0]
        assert (mounted["device.bus"], mounted["device.name"]) == ("network", share.source)
        assert mounted["exfilguard.mount.source"] == share.source
        assert mounted["exfilguard.mount.fs_type"] == "fuse.sshfs"

        # an untagged copy: written, no copy, no alert
        _copy_as_nobody(world / "holiday", point)
        writes = run.events.wait_for(Recorder.action("file.write", {"device.bus": "network"}), count=2)
        holiday = {f"{point}/holiday/{n}" for n in ("beach.jpg", "hills.jpg")}
        assert {w["file.path"] for w in writes} == holiday
        untagged = run.events.mark()
        assert not run.events.matching(Recorder.action("file.copy"))
        assert _alerts(_ours(run.events.events[:untagged], world)) == []

        _copy_as_nobody(db / "customers", point)
        copies = run.events.wait_for(Recorder.action("file.copy"), count=3, after=untagged)
        events = _ours(run.events.events, world)
    for copy in copies:
        assert copy["exfilguard.source.path"] == str(db / "customers" / Path(copy["file.path"]).name)
        assert copy["exfilguard.copy.identified_by"] == "exact"
        who = (copy["process.name"], copy["user.name"], copy["exfilguard.attribution"])
        assert who == ("cp", "nobody", "exact")
        assert (copy["device.bus"], copy["exfilguard.mount.source"]) == ("network", share.source)
    alerts = _alerts(events)
    # the same as for a stick: the database copied, and the whole of it (and, by the wall clock
    # the copies were made at, tagged data written after hours)
    expected = {"usb-copy-database", "usb-copy-whole-collection"}
    if any(after_hours(dt.datetime.fromtimestamp(ecs_epoch(c["@timestamp"]) or 0, dt.UTC)) for c in copies):
        expected.add("usb-write-after-hours")
    assert {a["policy.id"] for a in alerts} == expected
    for alert in alerts:
        assert f"network share {share.source} (fuse.sshfs)" in alert["summary"], alert["summary"]
    assert "nobody on" in alerts[0]["summary"]


@pytest.mark.root
def test_a_share_the_agent_may_not_look_into_is_a_gap(world: Path, share: SshShare) -> None:
    config = AgentConfig(tags={str(world / "db"): ["database"]}, sensors=SensorSettings(fanotify="on"))
    with Running(config) as run:
        point = share.mount(world / "mine", user="nobody")  # FUSE without allow_other: not even root
        unwatched = Recorder.action("agent.gap", {"exfilguard.gap.reason": "unwatched_mount"})
        gap = run.events.wait_for(unwatched)[0]
    assert (gap["file.path"], gap["device.bus"]) == (str(point), "network")
    assert gap["exfilguard.mount.source"] == share.source
    assert "Permission denied" in gap["event.reason"]
    assert [a["policy.id"] for a in _alerts([gap])] == ["agent-events-lost"]


def test_egress_mounts_and_gvfs_directories_from_the_mount_table(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    gvfs = tmp_path / "run" / "user" / "1000" / "gvfs"
    (gvfs / "mtp:host=SAMSUNG_Galaxy_R58M").mkdir(parents=True)
    (gvfs / "smb-share:server=fs1,share=eng").mkdir()
    (gvfs / "trash:").mkdir()
    mountinfo = tmp_path / "mountinfo"
    lines = [
        "40 27 0:41 / /mnt/nfs rw,relatime - nfs4 fs1:/export/eng rw",
        "41 27 0:42 / /mnt/win rw,relatime - cifs //fs1/eng rw",
        "42 27 0:43 / /media/phone rw,nosuid - fuse.jmtpfs jmtpfs rw,user_id=1000",
        "43 27 0:44 / /mnt/other rw - fuse.bindfs /srv rw",
        f"44 27 0:45 / {gvfs} rw,nosuid - fuse.gvfsd-fuse gvfsd-fuse rw,user_id=1000",
        # the site's own storage: NFS homes, and a share that holds tagged data
        "45 27 0:46 / /home rw - nfs4 fs1:/home rw",
        "46 27 0:47 / /home/alice rw - nfs4 fs1:/home/alice rw",
        "47 27 0:48 / /mnt/data rw - nfs4 fs1:/data rw",
        "48 27 0:49 / /home/alice/remote rw - fuse.sshfs alice@home.example:/ rw,user_id=1000",
        # another desktop user's GVfs, which the agent cannot list (here: not there at all)
        f"49 27 0:50 / {tmp_path}/run/user/1001/gvfs rw,nosuid - fuse.gvfsd-fuse gvfsd-fuse rw,user_id=1001",
    ]
    mountinfo.write_text("\n".join(lines) + "\n")
    policy = Removable(paths={f"{tmp_path}/run/user/*/gvfs/mtp:*": "mtp",
                              f"{tmp_path}/run/user/*/gvfs/smb-share:*": "network"})
    events = Recorder()
    table = MountTable(RemovableMedia(policy), events, path=str(mountinfo), tagged=["/mnt/data/*/db"])
    table.start()
    try:
        seen = {e["exfilguard.mount.point"]: (e["device.bus"], e["exfilguard.mount.source"],
                                              e["exfilguard.mount.fs_type"])
                for e in events.matching(Recorder.action("device.mount"))}
        phone, smb = "mtp:host=SAMSUNG_Galaxy_R58M", "smb-share:server=fs1,share=eng"
        assert seen == {
            "/mnt/nfs": ("network", "fs1:/export/eng", "nfs4"),
            "/mnt/win": ("network", "//fs1/eng", "cifs"),
            "/media/phone": ("mtp", "jmtpfs", "fuse.jmtpfs"),
            "/home/alice/remote": ("network", "alice@home.example:/", "fuse.sshfs"),
            f"{gvfs}/{phone}": ("mtp", phone, "fuse.gvfsd-fuse"),
            f"{gvfs}/{smb}": ("network", smb, "fuse.gvfsd-fuse"),
        }
        assert table.media.mount_for(f"{gvfs}/mtp:host=SAMSUNG_Galaxy_R58M/DCIM/x.csv") is not None
        assert table.media.mount_for(f"{gvfs}/trash:/x.csv") is None
        (gvfs / "mtp:host=SAMSUNG_Galaxy_R58M").rmdir()  # the phone unplugged: GVfs drops its directory
        mountinfo.write_text("\n".join(lines[1:]) + "\n")
        table.recheck()
        gone = {e["exfilguard.mount.point"] for e in events.matching(Recorder.action("device.unmount"))}
        assert gone == {"/mnt/nfs", f"{gvfs}/mtp:host=SAMSUNG_Galaxy_R58M"}
        unlisted = [r.getMessage() for r in caplog.records if "cannot look into" in r.getMessage()]
        assert len(unlisted) == 1, unlisted  # said once, not at every look
        assert unlisted[0].startswith(f"cannot look into {tmp_path}/run/user/1001/gvfs (fuse.gvfsd-fuse")
    finally:
        table.stop()
    narrowed = Removable(file_systems={"cifs": "network"}, paths={})
    events = Recorder()
    table = MountTable(RemovableMedia(narrowed), events, path=str(mountinfo))
    table.start()
    table.stop()
    assert [e["exfilguard.mount.point"] for e in events.events] == ["/mnt/win"]


def test_the_default_egress_types() -> None:
    defaults = Removable()
    for fs_type in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs"):
        assert defaults.file_systems[fs_type] == "network"
    for fs_type in ("fuse.jmtpfs", "fuse.simple-mtpfs", "fuse.go-mtpfs"):
        assert defaults.file_systems[fs_type] == "mtp"
    assert defaults.paths["/run/user/*/gvfs/mtp:*"] == "mtp"
    assert defaults.paths["/run/user/*/gvfs/smb-share:*"] == "network"
    with pytest.raises(ValueError, match="absolute"):
        Removable.model_validate({"paths": {"gvfs/mtp:*": "mtp"}})


@dataclass
class _UdevDisk:
    """What describe_udev reads of a pyudev Device, for a whole disk: this machine has no SD
    card reader, so its sysfs directory is made in tmp_path as the kernel lays it out."""

    sys_path: str
    sys_name: str
    device_node: str
    properties: dict[str, str]

    def find_parent(self, subsystem: str, device_type: str) -> None:
        return None


def test_an_sd_card_in_a_built_in_reader_is_removable_and_emmc_is_not(tmp_path: Path) -> None:
    def disk(name: str, card_type: str) -> _UdevDisk:
        where = tmp_path / name
        (where / "device").mkdir(parents=True)
        (where / "device" / "type").write_text(f"{card_type}\n")
        (where / "removable").write_text("0\n")  # MMC block devices never say removable
        (where / "size").write_text("62333952\n")
        return _UdevDisk(str(where), name, f"/dev/{name}", {"DEVTYPE": "disk"})

    card = describe_udev(disk("mmcblk0", "SD"), Removable())
    assert (card.removable, card.bus, card.size) == (True, "mmc", 62333952 * 512)
    assert not describe_udev(disk("mmcblk1", "MMC"), Removable()).removable  # eMMC: the system disk
    assert describe_udev(disk("mmcblk2", "MMC"), Removable(devices=["mmcblk2"])).removable
