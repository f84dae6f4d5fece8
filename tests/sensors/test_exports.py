"""Exports and encodings of tagged data onto a stick (tests/sensors/matrix.py EXPORTS), end to end.

Real `exfilguard-agent` and `exfilguard-collector` processes, the shipped pack, a loop-device
stick and real tools: a SQLite database dumped as SQL and exported as CSV with the sqlite3
shell (which opens the database read-write only to query it), a CSV as base64 and as JSON.
What lands is text made from what was read and larger than it; each must raise a high or
critical alert naming the tagged source and the stick, and the database read stays a read.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sensors import access, provenance
from collector.store import open_store
from common.agentconfig import AgentConfig, Removable
from tests.e2e.harness import Process, free_port, port_open, wait_for
from tests.sensors import matrix
from tests.sensors.recorder import Running

pytestmark = [pytest.mark.root]
BIN = Path(sys.executable).parent


def test_exports_and_encodings_of_tagged_data_alert(tmp_path: Path, base: Path, loop_stick: Any) -> None:
    db = matrix.make_data(base)
    port = free_port()
    collector_yaml, agent_yaml = matrix.configs(tmp_path, db, port)
    processes = [Process([str(BIN / "exfilguard-collector"), "--config", str(collector_yaml)],
                         tmp_path / "collector.log").start()]
    try:
        wait_for(lambda: port_open(port), 30, "the collector")
        processes.append(Process([str(BIN / "exfilguard-agent"), "--config", str(agent_yaml)],
                                 tmp_path / "agent.log").start())
        unique = time.monotonic_ns()
        stick, point = matrix.plugged(loop_stick, tmp_path, f"EGX{unique % 100000}", f"EGEXPORT{unique}")
        env = matrix.environment(base, point, base.parent / "scratch", (base.parent / "shm").resolve())
        alerts = matrix.AlertLog(tmp_path / "alerts.jsonl")
        outputs = {case.name: {matrix.expand(o, env) for o in case.outputs} for case in matrix.EXPORTS}

        def missed() -> list[str]:
            return [c.name for c in matrix.EXPORTS
                    if matrix.detected(alerts.for_paths(outputs[c.name]), str(db), stick.serial) is None]

        def why() -> str:
            seen = {name: [(a["policy.id"], a["severity"], a.get("exfilguard.copy.identified_by"))
                           for a in alerts.for_paths(outputs[name])] for name in missed()}
            return "\n".join(f"{name}: {found}" for name, found in seen.items())

        for case in matrix.EXPORTS:
            matrix.run_case(case, env)
        wait_for(lambda: not missed(), 60, "an alert for every export", why)
        dump = next(a for a in alerts.for_paths(outputs["sqlite-dump"])
                    if a["policy.id"] == "usb-copy-database")
        assert dump["exfilguard.source.path"] == str(db / "crm.sqlite")
        assert dump["process.name"] == "sqlite3"
        store = open_store(str(tmp_path / "collector.db"), readonly=True)
        try:
            crm = [e["event.action"] for e in store.events() if e.get("file.path") == str(db / "crm.sqlite")]
        finally:
            store.close()
        assert "file.read" in crm and "file.modify" not in crm  # queried, not changed
    finally:
        for process in reversed(processes):
            with contextlib.suppress(Exception):
                process.terminate()
            process.stop_quietly()


SLOW_ENCRYPTOR = r"""
import sys, time
source = open(sys.argv[1], "rb")  # opened first ...
time.sleep(3)  # ... then the key derived from the passphrase (gpg's S2K: seconds on a busy machine)
with open(sys.argv[2], "wb") as out:
    while chunk := source.read(65536):
        out.write(bytes(b ^ 0x5A for b in chunk))
source.close()  # after the output: its close is not yet known when the output is judged
"""


@contextlib.contextmanager
def _run_with_stick(tmp_path: Path, loop_stick: Any, size: int) -> Iterator[tuple[Running, Path, Path]]:
    """An agent (in this process) tagging one database file of `size` random bytes, and a
    stick it watches: (the run, the tagged file, the stick's mount point)."""
    db = tmp_path / "db"
    db.mkdir()
    secret = db / "ledger.db"
    secret.write_bytes(os.urandom(size))
    with Running(AgentConfig(tags={str(db): ["database"]}, removable=Removable(include_loop=True))) as run:
        unique = time.monotonic_ns()
        stick = loop_stick(label=f"EGK{unique % 100000}", serial=f"EGKDF{unique}")
        stick.plug()
        point = stick.mount()
        run.events.wait_for(run.events.action("device.mount", {"exfilguard.mount.point": str(point)}),
                            timeout=30)
        yield run, secret, point


def test_an_encryptor_that_opened_its_input_long_before_its_output_is_tied_by_bytes(
        tmp_path: Path, loop_stick: Any) -> None:
    """The tagged file was opened seconds before the file on the stick was born, and held open
    while it was written: a read during the write, so byte evidence, not a guess."""
    with _run_with_stick(tmp_path, loop_stick, 200_000) as (run, secret, point):
        out = point / "ledger.bin"
        subprocess.run([sys.executable, "-c", SLOW_ENCRYPTOR, str(secret), str(out)], check=True,
                       timeout=60)
        copy = run.events.wait_for(run.events.action("file.copy", {"file.path": str(out)}), timeout=30)[0]
        assert copy["exfilguard.copy.identified_by"] == "lineage-bytes"
        assert copy["exfilguard.source.path"] == str(secret)


LONG_LIVED_SAVER = r"""
import os, sys, time
held = open(sys.argv[1], "rb")  # a document opened and read, and kept open (an office suite)
held.read()
time.sleep(float(sys.argv[3]))  # ... a while later, something unrelated saved to the stick
with open(sys.argv[2], "wb") as out:
    out.write(b"%PDF-1.4\n" + os.urandom(150_000))
held.close()  # after the save: its close is handled before the save is judged
"""


def test_a_program_that_opened_a_tagged_file_long_before_saving_unrelated_data_is_a_guess(
        tmp_path: Path, loop_stick: Any, monkeypatch: Any) -> None:
    """Innocent look-alike: a long-lived program keeps a tagged file open it read long ago and
    saves something else, of a similar size, to a stick. It is not reading it now: a guess
    (lineage-process), never byte evidence (which would page as critical)."""
    monkeypatch.setattr(access, "HELD_READ_SECONDS", 1.0)  # "long ago", without a long test
    with _run_with_stick(tmp_path, loop_stick, 160_000) as (run, secret, point):
        out = point / "slides.pdf"
        # later than provenance's slack before the file's birth, and than the held-open bound
        wait = provenance.SLACK_SECONDS + 2 * access.HELD_READ_SECONDS
        subprocess.run([sys.executable, "-c", LONG_LIVED_SAVER, str(secret), str(out), str(wait)],
                       check=True, timeout=60)
        copy = run.events.wait_for(run.events.action("file.copy", {"file.path": str(out)}), timeout=30)[0]
        assert copy["exfilguard.copy.identified_by"] == "lineage-process"
        assert copy["exfilguard.copy.confidence"] < 0.5


PHOTO_ARCHIVER = r"""
import io, os, sys, tarfile
open(sys.argv[1], "rb").read()  # a tagged file read, and at once ...
with tarfile.open(sys.argv[2], "w:gz") as tar:  # ... an archive of holiday photos to the stick
    for i in range(3):
        photo = b"\xff\xd8\xff\xe0" + os.urandom(60_000)
        info = tarfile.TarInfo(f"holiday/img{i}.jpg")
        info.size = len(photo)
        tar.addfile(info, io.BytesIO(photo))
"""


def test_an_archive_whose_members_are_all_untagged_is_a_guess_whatever_was_read_just_before(
        tmp_path: Path, loop_stick: Any) -> None:
    """The writer read a tagged file of the archive's size just before writing it (byte
    lineage alone would say critical), but the archive was read whole and none of its members
    is tagged data: the listing outweighs the timing, a guess."""
    with _run_with_stick(tmp_path, loop_stick, 180_000) as (run, secret, point):
        out = point / "holiday.tgz"
        subprocess.run([sys.executable, "-c", PHOTO_ARCHIVER, str(secret), str(out)], check=True, timeout=60)
        copy = run.events.wait_for(run.events.action("file.copy", {"file.path": str(out)}), timeout=30)[0]
        assert copy["exfilguard.copy.identified_by"] == "lineage-process"
        assert copy["exfilguard.content.format"] == "tar.gz"
        assert copy["exfilguard.copy.members_total"] == 3


def _root_marks() -> list[int]:
    """Masks of this process's fanotify marks on the root file system (the agent runs here)."""
    dev = Path("/").stat().st_dev
    sdev = f"sdev:{(os.major(dev) << 20) | os.minor(dev):x} "
    masks = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if "fanotify" in str(fd.readlink()):
                info = Path(f"/proc/self/fdinfo/{fd.name}").read_text().splitlines()
                masks += [int(line.split("mask:")[1].split()[0], 16) for line in info
                          if sdev in line and " ino:" not in line and "mask:" in line]
    return masks


def test_a_stick_unmounted_before_the_agent_hears_of_it_leaves_the_root_watch_whole(
        tmp_path: Path, loop_stick: Any) -> None:
    """The agent hears of an unmount afterwards, when the mount point (left in place, as by
    `umount /mnt/usb`) names a directory on the root file system: stopping the stick's watch
    must not strip close-after-write from the root's own mark, or no file staged in /tmp or
    /home is derived from tagged data again (an export staged there, then copied to a stick,
    would be untagged)."""
    with _run_with_stick(tmp_path, loop_stick, 120_000) as (run, _secret, point):
        before = _root_marks()
        assert before and all(mask & 0x08 for mask in before)  # FAN_CLOSE_WRITE
        # the agent's scan of the new stick (and on a shared machine, another agent's) may hold
        # it for a moment: `umount` says busy, and a user tries again, as here
        deadline = time.monotonic() + 30
        while subprocess.run(["umount", str(point)], check=False, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"{point} stayed busy"
            time.sleep(0.2)
        assert point.is_dir()
        # the watch is dropped before device.unmount is reported (the same thread)
        run.events.wait_for(run.events.action("device.unmount", {"exfilguard.mount.point": str(point)}),
                            timeout=30)
        after = _root_marks()
        assert after and all(mask & 0x08 for mask in after)


SLOW_EXPORTER = ("import base64, sys, time; data = open(sys.argv[1], 'rb').read(); time.sleep(0.5); "
                 "sys.stdout.buffer.write(base64.b64encode(data))")


def test_an_export_whose_redirect_the_shell_closed_is_derived_from_what_its_child_read(
        tmp_path: Path, loop_stick: Any) -> None:
    """`sh -c 'export db > /tmp/x && cp /tmp/x stick/'` under dash: the shell opens /tmp/x for
    its child and closes it after the child exited, so the closer read nothing tagged. The child
    that read tagged data and had the file open is its writer: the staged file is derived, and
    its copy on the stick tied by bytes."""
    with _run_with_stick(tmp_path, loop_stick, 300_000) as (run, secret, point):
        staged = tmp_path / "export.b64"
        script = (f'"{sys.executable}" -c "{SLOW_EXPORTER}" "{secret}" > "{staged}" '
                  f'&& cp "{staged}" "{point}/"')
        subprocess.run(["dash", "-c", script], check=True, timeout=60)
        out = str(point / "export.b64")
        copy = run.events.wait_for(run.events.action("file.copy", {"file.path": out}), timeout=30)[0]
        assert copy["exfilguard.copy.identified_by"] == "lineage-bytes"
        assert copy["exfilguard.source.path"] == str(secret)


def _marked_file_systems(fd: int) -> set[int]:
    """Devices (as st_dev) of the file systems the fanotify group `fd` (this process's) marks."""
    out = set()
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("fanotify sdev:"):
            kernel = int(line.split()[1].split(":")[1], 16)  # the kernel's dev_t: major << 20 | minor
            out.add(os.makedev(kernel >> 20, kernel & 0xFFFFF))
    return out


def test_an_archive_encrypted_in_a_runtime_dir_mounted_after_start_is_tied_to_its_sources(
        tmp_path: Path, loop_stick: Any) -> None:
    """A user's /run/user/UID is a tmpfs mounted at login, after the agent started: it is
    marked when the mount table changes, so an archive encrypted there is derived and its
    copy onto the stick names the tagged file (before: nothing at all was raised)."""
    runtime = Path(f"/run/user/{60000 + os.getpid() % 5000}")
    runtime.mkdir(parents=True, exist_ok=True)
    with _run_with_stick(tmp_path, loop_stick, 200_000) as (run, secret, point):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(runtime)], check=True)
        try:
            sensor = run.sensor("fanotify")
            assert isinstance(sensor, access.ExactAccessSensor)
            dev = runtime.stat().st_dev
            wait_for(lambda: dev in _marked_file_systems(sensor.fanotify._group.fd), 30,
                     "the runtime directory's mark")
            staged, out = runtime / "x.enc", point / "x.enc"
            subprocess.run(["bash", "-c", f'openssl enc -aes-256-cbc -pbkdf2 -pass pass:x -in "{secret}" '
                            f'-out "{staged}" && cp "{staged}" "{out}"'], check=True, timeout=60)
            copy = run.events.wait_for(run.events.action("file.copy", {"file.path": str(out)}), timeout=30)[0]
            assert copy["exfilguard.copy.identified_by"] == "lineage-bytes"
            assert copy["exfilguard.source.path"] == str(secret)
            assert copy["process.name"] == "cp"
        finally:
            subprocess.run(["umount", "-l", str(runtime)], check=False)
            runtime.rmdir()
