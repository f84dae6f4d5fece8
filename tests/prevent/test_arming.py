"""The content guard's arming (agent/prevent/arming.py) with real parts: the in-process sensors
with prevent.removable_writes: block, a real loop-device stick, real programs, and the guard's
marks read as the kernel lists them (/proc/self/fdinfo of its permission group). While no
process carries tagged data the stick is not marked (a copy waits for no answer) and the tagged
trees are; the first tagged open arms the stick before it is answered, a carrier's end disarms
it, and a write opened while the stick was unarmed does not let tagged data through."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from agent.prevent.guard import ContentGuard
from agent.prevent.permission import FAN_OPEN_PERM
from tests.e2e.harness import wait_for
from tests.prevent.carrier import carrying, derive, group_marks, kernel_dev
from tests.prevent.test_content_guard import guarded
from tests.sensors.recorder import Running

__all__ = ["guarded"]

pytestmark = pytest.mark.root


def _stick_marked(guard: ContentGuard, point: Path) -> bool:
    """Whether the guard's permission group holds FAN_OPEN_PERM on the stick's file system."""
    assert guard.marks.group is not None
    return any(sdev == kernel_dev(point) and mask & FAN_OPEN_PERM
               for sdev, mask in group_marks(guard.marks.group.fd, "sdev"))


def _tree_asked(guard: ContentGuard, db: Path) -> bool:
    """Whether the guard's permission group asks the opens in the tagged tree's top directory."""
    assert guard.marks.group is not None
    ino = f"{db.stat().st_ino:x}"
    marks = group_marks(guard.marks.group.fd, "ino")
    return any(found == ino and mask & FAN_OPEN_PERM for found, mask in marks)


def _unarmed(guard: ContentGuard, db: Path, point: Path) -> None:
    """Until the stick is unmarked (no carrier lives), and then the tagged tree is asked."""
    wait_for(lambda: not guard.marks.sticks and not _stick_marked(guard, point), 15,
             "the stick to be unarmed", diagnose=guard.summary)
    assert _tree_asked(guard, db)


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60, start_new_session=True, check=False)


def _files_on(point: Path) -> dict[str, int]:
    """Path -> size of each file on the stick (a refused open of a new file leaves it empty: the
    kernel creates it before the open is asked)."""
    return {str(p.relative_to(point)): p.stat().st_size for p in point.rglob("*") if p.is_file()}


def test_the_stick_is_unmarked_while_no_carrier_lives_and_a_copy_is_not_asked(
        guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    _unarmed(guard, db, point)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(50):
        (photos / f"img{i}.jpg").write_bytes(os.urandom(2000))
    decided = guard.decided
    done = _run(f"cp -r {photos} {point}/photos", tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(_files_on(point)) == 50
    assert guard.decided == decided, guard.summary()  # not one open waited for an answer
    assert not guard.marks.sticks


def test_cp_r_of_tagged_data_right_after_the_stick_was_unarmed_lands_nothing(
        guarded: tuple[Running, Path, Path]) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    _unarmed(guard, db, point)
    armings = guard.stick_armings
    done = _run(f"cp -r {db} {point}/tree", db.parent)
    assert done.returncode != 0
    assert "not permitted" in done.stderr or "ermission denied" in done.stderr, done.stderr
    assert not any(_files_on(point).values()), _files_on(point)
    assert guard.stick_armings > armings, guard.summary()
    blocked = run.events.wait_for(run.events.action("file.block"))[0]
    assert blocked["tags"] == ["database"]
    assert blocked["file.path"].startswith(f"{point}/tree/")


def test_a_carrier_arms_the_stick_until_it_exits(guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    _unarmed(guard, db, point)
    with carrying(db / "orders.csv"):
        wait_for(lambda: _stick_marked(guard, point), 15, "the carrier to arm the stick",
                 diagnose=guard.summary)
        # the tagged tree is no longer asked (no writer), and the carrier keeps the stick armed:
        # an untagged write of another process is asked now
        wait_for(lambda: not _tree_asked(guard, db), 15, "the tagged tree to be heard only",
                 diagnose=guard.summary)
        decided = guard.decided
        (tmp_path / "plain.bin").write_bytes(os.urandom(3000))
        done = _run(f"cp {tmp_path}/plain.bin {point}/plain.bin", tmp_path)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: guard.decided > decided, 15, "the write to be asked", diagnose=guard.summary)
        assert _stick_marked(guard, point)
    # gone: the tagged tree is asked again first, then the stick's mark comes off
    _unarmed(guard, db, point)


def test_a_write_opened_while_unarmed_gets_no_tagged_data(guarded: tuple[Running, Path, Path]) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    _unarmed(guard, db, point)
    # the same process: its stick file opened unasked, then a tagged read is refused
    script = (f"exec 3> {point}/early.bin; echo clean >&3; "
              f"cat {db}/customers.db >&3")
    done = _run(script, db.parent)
    assert done.returncode != 0
    assert "ermission denied" in done.stderr or "not permitted" in done.stderr, done.stderr
    assert (point / "early.bin").read_bytes() == b"clean\n"
    _unarmed(guard, db, point)
    # its pipeline: gzip opens the stick file (unasked) before its group's cat reads tagged data
    done = _run(f"(sleep 0.5; cat {db}/orders.csv) | gzip > {point}/p.gz", db.parent)
    assert done.returncode != 0
    assert "ermission denied" in done.stderr or "not permitted" in done.stderr, done.stderr
    assert gzip.decompress((point / "p.gz").read_bytes()) == b""
    blocked = run.events.wait_for(run.events.action("file.block"), count=2)
    assert {e["file.path"] for e in blocked} == {str(db / "customers.db"), str(db / "orders.csv")}


def test_a_derived_file_is_asked_while_unarmed_and_its_copy_refused(
        guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    export = tmp_path / "export.csv"
    derive(guard, db / "customers.db", export)
    _unarmed(guard, db, point)
    group = guard.marks.group
    assert group is not None
    ino = f"{export.stat().st_ino:x}"
    wait_for(lambda: any(found == ino and mask & FAN_OPEN_PERM
                         for found, mask in group_marks(group.fd, "ino")),
             15, "the derived file to be asked", diagnose=guard.summary)
    done = _run(f"cp {export} {point}/e.csv", tmp_path)
    assert done.returncode != 0
    assert "not permitted" in done.stderr or "ermission denied" in done.stderr, done.stderr
    assert not any(_files_on(point).values()), _files_on(point)
    blocked = run.events.wait_for(run.events.action("file.block"))[0]
    assert "derived file" in blocked["event.reason"]


def test_a_staged_copy_then_its_copy_as_two_commands_lands_nothing(
        guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    # typed in an interactive shell: each command a process group of its own, the second right
    # after the first ended (before its /tmp file may be known as derived)
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    _unarmed(guard, db, point)
    staged = tmp_path / "x.bin"
    assert _run(f"cp {db}/customers.db {staged}", tmp_path).returncode == 0
    done = _run(f"cp {staged} {point}/x.bin", tmp_path)
    assert done.returncode != 0
    assert "not permitted" in done.stderr or "ermission denied" in done.stderr, done.stderr
    assert not any(_files_on(point).values()), _files_on(point)
