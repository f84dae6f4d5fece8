"""prevent.removable_writes: block on a real loop-device stick, with real programs: a process (or
pipeline) carrying tagged data cannot put a byte of it on the stick (EPERM, `file.block`);
untagged copies go through."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.prevent import grants
from agent.prevent.guard import ContentGuard
from collector.evidence.keys import SigningKey
from common.agentconfig import AgentConfig, PreventSettings
from common.ecstime import ecs_time
from common.grants import signed_bytes
from lab.loopstick import LoopStick
from tests.e2e.harness import wait_for
from tests.helpers import run_cli
from tests.prevent.carrier import carrying
from tests.sensors.recorder import Running

pytestmark = pytest.mark.root


@pytest.fixture
def guarded(tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> Iterator[tuple[Running, Path, Path]]:
    """Sensors with prevent.removable_writes: block, a tagged tree, and a mounted stick."""
    db = tmp_path / "srv-db"
    (db / "sub").mkdir(parents=True)
    for name in ("customers.db", "orders.csv", "sub/ledger.csv"):
        (db / name).write_bytes(os.urandom(20_000))
    config = AgentConfig(tags={str(db): ["database"]}, state_dir=str(tmp_path / "state"),
                         prevent=PreventSettings(removable_writes="block", allowed_groups=["users"],
                                                 # decisions under test, not timeouts: a loaded CI
                                                 # machine must not turn them into fail-open
                                                 decision_timeout_ms=5000))
    stick = loop_stick(label=f"PV{os.getpid() % 10000}", serial=f"EGPV{os.getpid()}")
    with Running(config) as run:
        point = stick.mount()
        guard = run.sensor("prevent")
        assert isinstance(guard, ContentGuard)
        wait_for(lambda: str(point) in guard.watching(), 15, "the guard to mark the stick")
        yield run, db, point


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # a job of its own, as a terminal would start it
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60, start_new_session=True, check=False)


def _bytes_on(point: Path) -> int:
    return sum(p.stat().st_size for p in point.rglob("*") if p.is_file())


def test_tagged_copies_are_refused_before_a_byte_lands(guarded: tuple[Running, Path, Path]) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    (db / "new").mkdir()  # made after the guard started: its opens must be heard too
    (db / "new" / "plan.csv").write_bytes(os.urandom(20_000))
    wait_for(lambda: str(db / "new") in guard.tagged_marked(), 15, "the new tagged directory to be marked")
    copy = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
    attempts = {
        "cp": f"cp {db}/customers.db {point}/c.db",
        "cp -r": f"cp -r {db} {point}/tree",
        "python": f"{sys.executable} -c '{copy}' {db}/orders.csv {point}/o.csv",
        "redirection": f"cat {db}/customers.db > {point}/r.db",
        "pipeline": f"tar cf - -C {db} . | gzip > {point}/p.tgz",
        "new directory": f"tar cf - -C {db}/new . | gzip > {point}/n.tgz",
        "tar": f"tar cf {point}/t.tar -C {db} .",
        "zip": f"cd {db} && zip -qr {point}/z.zip .",
        "rsync": f"rsync -a {db}/ {point}/rs/",
    }
    failed = {}
    for name, script in attempts.items():
        done = _run(script, db.parent)
        failed[name] = done.returncode != 0
        assert "not permitted" in done.stderr or "ermission denied" in done.stderr, (name, done.stderr)
    assert all(failed.values()), failed
    landed = {str(p.relative_to(point)): p.stat().st_size for p in point.rglob("*") if p.is_file()}
    tagged_bytes = {p.read_bytes() for p in db.rglob("*") if p.is_file()}
    for rel, _size in landed.items():
        data = (point / rel).read_bytes()
        assert not any(chunk in data for chunk in (t[:4096] for t in tagged_bytes)), rel
    blocks = run.events.wait_for(run.events.action("file.block"), count=len(attempts))
    first = blocks[0]
    assert first["tags"] == ["database"]
    assert first["user.name"] == "root"
    assert first["device.serial"] == f"EGPV{os.getpid()}"
    assert "prevent.removable_writes: block" in first["event.reason"]


def test_reading_the_stick_does_not_arm_the_tagged_trees(guarded: tuple[Running, Path, Path]) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    # a process of another session carries tagged data: the sticks are armed (agent/prevent/arming.py)
    with carrying(db / "orders.csv"):
        wait_for(lambda: guard.carriers.count() > 0 and guard.marks.sticks, 15, "the sticks to be armed",
                 diagnose=guard.summary)
        _reads_and_writes_the_stick(guard, point)


def _reads_and_writes_the_stick(guard: ContentGuard, point: Path) -> None:
    (point / "photo.jpg").write_bytes(os.urandom(5000))  # this process runs the guard: not asked
    decided, armings, fast = guard.decided, guard.armings, guard.fast
    done = _run(f"cat {point}/photo.jpg > /dev/null", point.parent)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: guard.decided > decided, 15, "the read to be decided", diagnose=guard.summary)
    # by the responder, from the open's flags: not a trip to the agent's decision thread
    wait_for(lambda: guard.fast > fast, 15, "the read to be answered by the responder",
             diagnose=guard.summary)
    # a tagged read would otherwise wait for an answer until the next look for writers
    assert guard.armings == armings, guard.summary()
    done = _run(f"cat {point}/photo.jpg > {point}/copy.jpg", point.parent)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: guard.armings > armings, 15, "a write to arm the tagged trees", diagnose=guard.summary)


def test_untagged_copies_go_through(guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    run, _db, point = guarded
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(20):
        (photos / f"img{i}.jpg").write_bytes(os.urandom(5000))
    done = _run(f"cp -r {photos} {point}/photos && cat {photos}/img1.jpg > {point}/one.jpg", tmp_path)
    assert done.returncode == 0, done.stderr
    assert _bytes_on(point) == 21 * 5000
    assert not run.events.matching(run.events.action("file.block"))


def test_an_allowed_group_copies_and_the_rest_do_not(guarded: tuple[Running, Path, Path]) -> None:
    run, db, point = guarded
    # the same root, once with the allowed group among its groups (imaging staff), once without
    done = _run(f"setpriv --groups 100 cp {db}/customers.db {point}/allowed.db", db.parent)
    assert done.returncode == 0, done.stderr
    assert (point / "allowed.db").read_bytes() == (db / "customers.db").read_bytes()
    allowed = str(point / "allowed.db")
    run.events.wait_for(lambda e: e["event.action"] == "file.copy" and e["file.path"] == allowed)
    done = _run(f"setpriv --groups 0 cp {db}/customers.db {point}/other.db", db.parent)
    assert done.returncode != 0
    blocked = run.events.wait_for(run.events.action("file.block"))
    assert [e["file.path"] for e in blocked] == [f"{point}/other.db"]
    # the allowed copy, reported before the other attempt, is not taken back by the quarantine
    assert (point / "allowed.db").exists()
    assert not run.events.matching(run.events.action("file.quarantine"))


def test_tagged_data_that_got_past_the_guard_is_quarantined_and_restorable(
        guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    run, db, point = guarded
    # bytes handed over by a process nothing watches (the agent's own reads are not heard): the
    # writer carries nothing the guard can see, so the open goes through and the content lands
    data = (db / "orders.csv").read_bytes()
    done = subprocess.run(["sh", "-c", f"cat > {point}/innocent.bin"], input=data, capture_output=True,
                          timeout=60, start_new_session=True, check=False)
    assert done.returncode == 0, done.stderr
    moved = run.events.wait_for(run.events.action("file.quarantine"), timeout=30)[0]
    assert moved["file.path"] == f"{point}/innocent.bin"
    assert moved["exfilguard.source.path"] == str(db / "orders.csv")
    assert not (point / "innocent.bin").exists()
    where = Path(run.sensor("quarantine").where)  # type: ignore[attr-defined]
    assert where.stat().st_mode & 0o777 == 0o700
    config = tmp_path / "agent.yaml"
    config.write_text(f"state_dir: {where.parent}\n")
    listed = run_cli("quarantine", "--agent-config", str(config), "--json")
    assert [e["path"] for e in json.loads(listed.stdout)] == [f"{point}/innocent.bin"]
    back = run_cli("quarantine", "restore", moved["event.id"], "--agent-config", str(config),
                   "--to", str(tmp_path))
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "innocent.bin").read_bytes() == data
    assert not list(where.iterdir())


def test_a_time_boxed_exception_lets_exactly_its_user_copy_until_it_ends(
        tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> None:
    db = tmp_path / "srv-db"
    db.mkdir()
    (db / "customers.db").write_bytes(os.urandom(20_000))
    serial = f"EGEX{os.getpid()}"
    stick = loop_stick(label=f"EX{os.getpid() % 10000}", serial=serial)
    point = stick.mount()
    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=6)  # the sensors start
    later = until + dt.timedelta(hours=1)
    key = SigningKey(Ed25519PrivateKey.generate())  # as `exfilguard exception grant` signs
    state = tmp_path / "state"
    state.mkdir()
    grants.pin(state, key.public.b64())  # as a push over the stream pins it

    def signed(n: int, user: str, device: str, ends: dt.datetime, note: str = "") -> dict[str, str]:
        grant = {"id": f"G-{n}", "host": socket.gethostname(), "user": user, "device": device,
                 "until": ecs_time(ends), "note": note, "granted_by": "carol"}
        return {**grant, "signature": base64.b64encode(key.sign(signed_bytes(grant))).decode()}

    prevent = PreventSettings.model_validate({
        "removable_writes": "block", "decision_timeout_ms": 5000, "exceptions": [
            signed(1, "nobody", "", later),                                  # another user
            signed(2, "root", "OTHER-SERIAL", later),                        # another stick
            signed(3, "root", serial, until, "imaging job 4711"),
        ]})
    with Running(AgentConfig(tags={str(db): ["database"]}, state_dir=str(state), prevent=prevent)) as run:
        guard = run.sensor("prevent")
        assert isinstance(guard, ContentGuard)
        wait_for(lambda: str(point) in guard.watching(), 15, "the guard to mark the stick")
        done = _run(f"cp {db}/customers.db {point}/granted.db", tmp_path)
        assert done.returncode == 0, done.stderr
        allowed = run.events.wait_for(run.events.action("file.allow"))[0]
        assert "allowed by grant G-3 (granted by carol: imaging job 4711)" in allowed["event.reason"]
        assert allowed["user.name"] == "root"
        wait_for(lambda: dt.datetime.now(dt.UTC) > until, 10, "the exception to end")
        done = _run(f"cp {db}/customers.db {point}/late.db", tmp_path)
        assert done.returncode != 0
        run.events.wait_for(run.events.action("file.block"))
