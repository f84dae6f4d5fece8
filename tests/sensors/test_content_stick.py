"""Copies an exact hash misses, onto a real loop-device stick, made with real tools.

Archives of the tagged tree (tar with gzip/xz/zstd, zip, 7z), `split` parts, an edited copy,
a `sed`-transformed CSV, and a raw `dd` of a tgz onto the unmounted stick: each is a
`file.copy` naming its sources, with the method, a confidence and the share found. A photo
written by a process that never read tagged data is only a `file.write`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.content import ContentCatalog, Identification
from agent.content.examiner import Examiner
from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.sensors.recorder import Mapping, Running

pytestmark = pytest.mark.root

TAGS = ["database"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "srv" / "db"
    root.mkdir(parents=True)
    rng = random.Random(5)
    for i in range(3):
        (root / f"table{i}.dat").write_bytes(rng.randbytes(120_000 + 7_000 * i))
    lines = ["id,name,email,iban"] + [
        f"{i},Name{i} {rng.choice(['Ng', 'Roe', 'Diaz'])},u{i}.{rng.randrange(10**6)}@corp.example,"
        f"GB{rng.randrange(10**16):016d}" for i in range(1500)]
    (root / "customers.csv").write_text("\n".join(lines) + "\n")
    yield root


def _running(db: Path) -> Running:
    settings = SensorSettings.model_validate({"mass_read_files": 50})
    return Running(AgentConfig(tags={str(db): TAGS}, sensors=settings))


def _sh(cmd: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", cmd], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ready_and_mounted(run: Running, stick: LoopStick) -> tuple[ContentCatalog, str]:
    """Wait for the catalog to have fingerprinted the tagged files, then plug and mount the
    stick and wait for the agent to see the mount; returns (catalog, mount point)."""
    catalog = run.sensor("content")
    assert isinstance(catalog, ContentCatalog) and catalog.wait_ready(30)
    stick.plug()
    point = str(stick.mount())
    run.events.wait_for(run.events.action("device.mount", {"exfilguard.mount.point": point}))
    return catalog, point


def _copy_of(run: Running, path: str) -> Mapping:
    return run.events.wait_for(run.events.action("file.copy", {"file.path": path}), timeout=30)[0]


def _archive_copy(point: str, fmt: str) -> Callable[[Mapping], bool]:
    def check(event: Mapping) -> bool:
        return (event.get("event.action") == "file.copy" and event.get("exfilguard.content.format") == fmt
                and str(event.get("file.path", "")).startswith(point + "/"))
    return check


def test_archives_parts_and_transformed_copies_on_a_stick(loop_stick: Any, db: Path, tmp_path: Path) -> None:
    stick: LoopStick = loop_stick(label=f"EGC{os.getpid() % 100000}", serial=f"EGC{os.getpid()}")
    staged = tmp_path / "staged"
    staged.mkdir()
    _sh(f"split -b 50000 {db / 'table2.dat'} part_ && {{ cat {db / 'table0.dat'}; echo note; }} > r.bin && "
        f"sed 's/@corp.example/@home.test/' {db / 'customers.csv'} > export.csv", staged)
    with _running(db) as run:
        _catalog, point = _ready_and_mounted(run, stick)
        srv = db.parent
        sources = sorted(str(p) for p in db.iterdir())

        for cmd, name, fmt in (
            ("tar czf {p}/db.tgz db", "db.tgz", "tar.gz"),
            ("tar cJf {p}/db.txz db", "db.txz", "tar.xz"),
            ("tar --zstd -cf {p}/db.tar.zst db", "db.tar.zst", "tar.zst"),
            ("zip -qr {p}/db.zip db", "db.zip", "zip"),
            ("7z a -bd {p}/db.7z db", "db.7z", "7z"),
        ):
            mark = run.events.mark()
            _sh(cmd.format(p=point), srv)
            # zip writes a temporary file and renames it: the copy may carry either name
            copy = run.events.wait_for(_archive_copy(point, fmt), after=mark, timeout=30)[0]
            assert copy["exfilguard.copy.identified_by"] == "member", name
            assert copy["exfilguard.copy.members_total"] == 4
            assert sorted(copy["exfilguard.copy.sources"]) == sources, name
            assert {m["source"] for m in copy["exfilguard.copy.members"]} == set(sources)
            assert copy["exfilguard.copy.confidence"] >= 0.95 and copy["exfilguard.copy.share"] == 1.0
            assert copy["exfilguard.source.path"] in sources
            assert copy["tags"] == TAGS and copy["device.serial"] == stick.serial

        # made before the agent started (no lineage to them): only their content ties them
        for name in sorted(p.name for p in staged.iterdir()):
            _sh(f"cp {staged / name} {point}/{name}", srv)
        table = db / "table2.dat"
        shares = 0.0
        for part in ("part_aa", "part_ab"):  # the last 34 KB part is one or two chunks cut at both ends
            copy = _copy_of(run, f"{point}/{part}")
            assert copy["exfilguard.copy.identified_by"] == "chunks"
            assert copy["exfilguard.source.path"] == str(table)
            shares += copy["exfilguard.copy.share"]
        assert 0.4 < shares <= 1.0

        copy = _copy_of(run, f"{point}/r.bin")
        assert copy["exfilguard.copy.identified_by"] == "chunks"
        assert copy["exfilguard.source.path"] == str(db / "table0.dat")
        assert copy["exfilguard.copy.share"] > 0.6

        copy = _copy_of(run, f"{point}/export.csv")
        assert copy["exfilguard.copy.identified_by"] == "text"
        assert copy["exfilguard.source.path"] == str(db / "customers.csv")
        assert 0.3 <= copy["exfilguard.copy.share"] < 1.0

        _sh(f"head -c 300000 /dev/urandom > {point}/holiday.jpg", srv)
        run.events.wait_for(run.events.action("file.write", {"file.path": f"{point}/holiday.jpg"}))
        _sh(f"tar czf {point}/zz-flush.tgz db", srv)  # examined after the photo: its verdict is in
        _copy_of(run, f"{point}/zz-flush.tgz")
        assert not run.events.matching(run.events.action("file.copy", {"file.path": f"{point}/holiday.jpg"}))


def test_a_raw_dd_of_a_tgz_onto_the_stick_is_read_back(loop_stick: Any, db: Path, tmp_path: Path) -> None:
    stick: LoopStick = loop_stick(label=f"EGD{os.getpid() % 100000}", serial=f"EGD{os.getpid()}")
    _sh(f"tar czf {tmp_path}/db.tgz -C {db.parent} db", tmp_path)
    with _running(db) as run:
        stick.plug()
        run.events.wait_for(run.events.action("device.attach", {"device.serial": stick.serial}))
        _sh(f"dd if={tmp_path}/db.tgz of={stick.device} bs=64k conv=fsync,notrunc status=none", tmp_path)
        raw = run.events.wait_for(run.events.action("device.write", {"device.serial": stick.serial}))[0]
        assert raw["exfilguard.count"] >= (tmp_path / "db.tgz").stat().st_size
        copy = _copy_of(run, stick.device)
        assert copy["device.serial"] == stick.serial
        assert copy["exfilguard.copy.identified_by"] == "member"
        assert copy["exfilguard.content.format"] == "tar.gz"
        assert sorted(copy["exfilguard.copy.sources"]) == sorted(str(p) for p in db.iterdir())
        assert copy["exfilguard.source.path"] in copy["exfilguard.copy.sources"]
        assert copy["tags"] == TAGS
        # who: dd had exited when the counter moved; the device node's own watch named it
        for event in (raw, copy):
            assert event["process.name"] == "dd" and event["exfilguard.attribution"] == "exact"
            assert f"of={stick.device}" in event["process.command_line"]


ENCRYPT = "openssl enc -aes-256-cbc -pbkdf2 -pass pass:x"


@pytest.mark.parametrize(("script", "identified_by"), [
    # nothing tagged can be read back from the device, but dd wrote what the pipeline read
    (f"tar cz -C {{db}} db | {ENCRYPT} | dd of={{dev}} bs=64k iflag=fullblock conv=fsync status=none",
     "lineage-bytes"),
    # staged in /tmp first: what is read back is the staged file's, named by the tagged files
    (f"tar czf s.tgz -C {{db}} db && {ENCRYPT} -in s.tgz -out s.enc && dd if=s.enc of={{dev}} conv=fsync "
     "status=none", None),
])
def test_an_encrypted_archive_written_raw_onto_the_stick_names_the_tagged_sources(
        loop_stick: Any, db: Path, tmp_path: Path, script: str, identified_by: str | None) -> None:
    """`dd of=/dev/sdX` of an encrypted archive of the tagged tree, straight from a pipeline or
    staged in /tmp: a copy of the device naming the tagged files and dd."""
    stick: LoopStick = loop_stick(label=f"EGE{os.getpid() % 100000}", serial=f"EGE{os.getpid()}")
    with _running(db) as run:
        stick.plug()
        run.events.wait_for(run.events.action("device.attach", {"device.serial": stick.serial}))
        _sh(script.format(db=db.parent, dev=stick.device), tmp_path)
        copy = _copy_of(run, stick.device)
        if identified_by is not None:
            assert copy["exfilguard.copy.identified_by"] == identified_by
        assert copy["exfilguard.source.path"].startswith(str(db) + "/")
        assert all(source.startswith(str(db) + "/") for source in copy["exfilguard.copy.sources"])
        assert copy["tags"] == TAGS
        assert copy["process.name"] == "dd" and copy["exfilguard.attribution"] == "exact"


def test_a_copy_still_matches_its_source_edited_or_deleted_right_after(loop_stick: Any, db: Path) -> None:
    """`cp` then `sed -i` (or `rm`) of the source, the copy's close handled after the change
    was indexed: it is still an exact copy of the source as it was (formers.py)."""
    stick: LoopStick = loop_stick(label=f"EGF{os.getpid() % 100000}", serial=f"EGF{os.getpid()}")
    edited, deleted = db / "small.csv", db / "gone.csv"
    edited.write_text("".join(f"{i},Name{i},n{i}@corp.example\n" for i in range(300)))
    deleted.write_text("".join(f"{i},Other{i},o{i}@corp.example\n" for i in range(200)))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (edited, deleted)}
    with _running(db) as run:
        catalog, point = _ready_and_mounted(run, stick)
        # the copies are written but held open: their close comes after the sources changed
        shell = subprocess.Popen(
            ["bash", "-c", f'exec 3>"{point}/e.csv" 4>"{point}/d.csv"; cat "{edited}" >&3; '
                           f'cat "{deleted}" >&4; echo copied; read go'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert shell.stdout is not None and shell.stdout.readline() == "copied\n"
            _sh(f"sed -i 's/^1,/1 ,/' {edited} && rm {deleted}", db)
            index = catalog.index
            now = edited.stat()

            def indexed() -> bool:
                entries = {path: (size, mtime) for path, size, mtime, _tags in index.snapshot()}
                return (entries.get(str(edited)) == (now.st_size, now.st_mtime_ns)
                        and str(deleted) not in entries)

            deadline = time.monotonic() + 15
            while not indexed():
                assert time.monotonic() < deadline, "the edit and the deletion were not indexed"
                time.sleep(0.02)
        finally:
            shell.communicate("go\n", timeout=10)
        for copy_name, source in (("e.csv", edited), ("d.csv", deleted)):
            copy = _copy_of(run, f"{point}/{copy_name}")
            assert copy["exfilguard.copy.identified_by"] == "exact", copy
            assert copy["exfilguard.source.path"] == str(source)
            assert copy["exfilguard.source.sha256"] == before[source]
            assert copy["tags"] == TAGS and copy["device.serial"] == stick.serial


def test_a_stick_pulled_during_inspection_is_named_and_the_agent_goes_on(
        loop_stick: Any, db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A tgz written onto the stick, whose medium then goes (the loop device's capacity drops to
    0, as a card reader's does when the card is pulled: every read fails) before the examiner
    reads it: a warning names the file and the reason, an agent.gap counts it, the copy is
    still judged on lineage, and the agent goes on (another file is examined, tagged reads are
    still reported)."""
    stick: LoopStick = loop_stick(label=f"EGP{os.getpid() % 100000}", serial=f"EGP{os.getpid()}")
    try:
        _pull_during_inspection(stick, db, tmp_path, caplog)
    finally:  # no medium left to write to: detach the file system, whoever still holds it
        subprocess.run(["umount", "-l", str(stick.mount_point)], check=False, capture_output=True)


def _pull_during_inspection(stick: LoopStick, db: Path, tmp_path: Path,
                            caplog: pytest.LogCaptureFixture) -> None:
    with _running(db) as run:
        _catalog, point = _ready_and_mounted(run, stick)
        written = Path(point) / "db.tgz"
        shell = subprocess.Popen(  # the archive written, its close held until the medium is gone
            ["bash", "-c", f'exec 3>"{written}"; tar czf - -C "{db.parent}" db >&3; sync -f "{point}"; '
                           f'echo written; read go'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert shell.stdout is not None and shell.stdout.readline() == "written\n"
            fd = os.open(written, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next reads go to the device
            finally:
                os.close(fd)
            os.truncate(stick.image, 0)
            subprocess.run(["losetup", "--set-capacity", stick.device], check=True)
        finally:
            shell.communicate("go\n", timeout=10)
        copy = _copy_of(run, str(written))
        assert copy["exfilguard.copy.identified_by"] == "lineage-bytes"  # tar read the tagged tree
        assert "read failed" in copy["exfilguard.content.refused"]
        unreadable = {"exfilguard.gap.reason": "content_unreadable"}
        assert run.events.wait_for(run.events.action("agent.gap", unreadable))[0]["exfilguard.gap.lost"] == 1
        assert any(str(written) in r.getMessage() and "device was removed or failed" in r.getMessage()
                   for r in caplog.records if r.levelname == "WARNING")
        # the agent goes on: the examiner answers, tagged reads are still reported
        examiner = run.sensor("examiner")
        assert isinstance(examiner, Examiner)
        results: queue.Queue[Identification] = queue.Queue()
        local = tmp_path / "local.bin"
        local.write_bytes((db / "table1.dat").read_bytes())
        assert examiner.examine(str(local), results.put)
        assert results.get(timeout=15).sources == [str(db / "table1.dat")]
        subprocess.run(["cat", str(db / "customers.csv")], check=True, stdout=subprocess.DEVNULL)
        run.events.wait_for(run.events.action("file.read", {"file.path": str(db / "customers.csv")}))
