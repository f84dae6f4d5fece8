"""Innocent work (tests/sensors/innocent.py) against one real agent and collector pages nobody.

Real `exfilguard-agent` and `exfilguard-collector` processes, the shipped pack with its
suppression windows, a loop-device stick listed as the approved backup drive, a tagged database
and a tagged document tree. The collector's clock is put in the backup window (00:00-05:00) by
its timezone, so the after-hours rules are awake for every case too. Real tools: git, venv and
pip, make, vim (backup and swap files), atomic saves, cat/less/grep/sqlite3 then photos copied
from the same shell, a Python session saving an unrelated file after reading tagged ones, photos
and music, a tar of the home, rsync of Documents, grep -r, make and git commit in a tagged source
tree, the backup account's rsync and tar of the tagged trees, an office suite's save (a lock file,
lu*.tmp renamed over an .odt) and a file manager's gio copy and cp after tagged reads, clamscan as
clamav over every tagged file, the tagged CSV's header line alone on the stick, a .deb built in
/tmp and copied by a shell that read tagged files, the system's licence texts (the tagged
repository's LICENSE is one of them), and the stick unplugged and plugged again at
once after the backup. As a desk user in none of the pack's lists: ctags -R, git status/log/blame
and grep -r over the tagged trees, a plocate database of them, the project's tests reading tagged
fixtures then the build output copied, a handful of tagged files opened then the photos copied, a
Python session writing a generated report 5 s after reading the tagged CSV, a tar of the photos
while the backup account's rsync reads every tagged tree, rsync of music, a downloaded PDF copied
and a downloaded zip unpacked onto the stick; the site's Python indexer (listed by name) run by
its service account, and by the desk user (a mass read: the one medium it may raise); the backup
account's rsync --delete mirror of the tagged trees onto its drive.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.store import StoreError, open_store
from tests.e2e.harness import Process, free_port, port_open, wait_for
from tests.sensors import innocent, innocent_cases, matrix

pytestmark = [pytest.mark.root, pytest.mark.slow]
BIN = Path(sys.executable).parent
FAST = ("git-clone-commit", "venv-pip-wheel", "make-build", "vim-tagged-backup", "vim-stick", "atomic-save",
        "engineer-day", "python-session", "photos-music", "tar-home", "rsync-documents", "code-grep",
        "code-make", "code-git-commit", "nightly-backup", "office-save", "file-manager", "clamscan",
        "csv-header", "deb-build", "licences")
# the desk user's cases, with an agent and a collector of their own (one test's time stays bounded)
DESK = tuple(c.name for c in innocent_cases.DESK_CASES if c.name not in ("dpkg-x-stick", "apt-download"))


def _copies_after_second_mount(tmp_path: Path, point: str) -> list[str]:
    store = open_store(str(tmp_path / "collector.db"), readonly=True)
    try:
        events = list(store.events())
    except StoreError:
        return []
    finally:
        store.close()
    mounts = [i for i, e in enumerate(events) if e.get("event.action") == "device.mount"
              and e.get("file.path") == point]
    if len(mounts) < 2:
        return []
    # the agent sees every stick on the machine: only this one's files count
    return [str(e.get("file.path")) for e in events[mounts[1]:]
            if e.get("event.action") in ("file.copy", "file.write")
            and str(e.get("file.path", "")).startswith(f"{point}/")
            and not str(e.get("file.path", "")).startswith(f"{point}/.sentinel")]


class _Run:
    """A real collector and agent (the shipped pack, the stick approved for backups, the clock in
    the backup window), the data and the stick the innocent cases use."""

    def __init__(self, tmp_path: Path, base: Path, loop_stick: Any) -> None:
        matrix.make_data(base)
        innocent.make_home(base)
        self.work = base.parent / "scratch"
        self.work.chmod(0o1777)
        innocent.make_wheel(self.work / "wheels")
        innocent.make_signatures(self.work)
        self.tmp_path = tmp_path
        port = free_port()
        self.serial = f"EGINNO{free_port()}"
        collector_yaml, agent_yaml = innocent.configs(tmp_path, base, port, innocent.night_zone(),
                                                      self.serial)
        self.processes = [Process([str(BIN / "exfilguard-collector"), "--config", str(collector_yaml)],
                                  tmp_path / "collector.log").start()]
        try:
            wait_for(lambda: port_open(port), 30, "the collector")
            self.processes.append(Process([str(BIN / "exfilguard-agent"), "--config", str(agent_yaml)],
                                          tmp_path / "agent.log").start())
            self.stick, point = matrix.plugged(loop_stick, tmp_path, self.serial[-8:], self.serial)
        except BaseException:
            self.stop()
            raise
        self.env = innocent.environment(base, point, self.work, pause=5)
        self.log = matrix.AlertLog(tmp_path / "alerts.jsonl")

    def paging(self, names: tuple[str, ...]) -> dict[str, list[str]]:
        """Run these cases; what each raised that pages someone."""
        paged = {}
        for case in (c for c in innocent.CASES if c.name in names):
            found = innocent.judge(case, self.env, self.log, self.tmp_path, self.serial)
            paged[case.name] = [innocent.brief(a) for a in innocent.pages(found, case.medium)]
        return {name: bad for name, bad in paged.items() if bad}

    def stop(self) -> None:
        """Stop the agent and the collector."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.terminate()
            process.stop_quietly()


def test_innocent_work_pages_nobody(tmp_path: Path, base: Path, loop_stick: Any) -> None:
    run = _Run(tmp_path, base, loop_stick)
    try:
        assert run.paging(FAST) == {}
        # the backup drive unplugged right after the job and plugged again: what the job wrote
        # was reported (and excepted) while it was mounted, not found again as a copy by nobody
        run.stick.unmount()
        run.stick.unplug()
        run.stick.plug()
        point = run.stick.mount()
        replug = innocent_cases.Innocent("after-replug", 'ls "$STICK" >/dev/null')
        found = innocent.judge(replug, run.env | {"STICK": str(point)}, run.log, tmp_path, run.serial)
        assert innocent.pages(found) == []
        assert _copies_after_second_mount(tmp_path, str(point)) == []
    finally:
        run.stop()


def test_a_desk_users_day_pages_nobody(tmp_path: Path, base: Path, loop_stick: Any) -> None:
    run = _Run(tmp_path, base, loop_stick)
    try:
        assert run.paging(DESK) == {}
    finally:
        run.stop()
