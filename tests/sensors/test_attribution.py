"""Who wrote to the stick, under load: short-lived writers (tar czf, whose forked child runs
`sh -c gzip`; rsync, whose receiver forks without an exec; cp of a small file), run as another
user while every CPU is busy, are still named with their user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.agentconfig import AgentConfig, SensorSettings
from lab.loopstick import LoopStick
from tests.sensors.recorder import Mapping, Running

pytestmark = pytest.mark.root

ROUNDS = int(os.environ.get("EG_ATTRIBUTION_ROUNDS", "8"))
AS_NOBODY = ["runuser", "-u", "nobody", "--"]
# rsync's receiver forks without an exec and may be gone, unseen, before its writes are read:
# the kernel's fork notifications name its parent
RSYNC: set[str | None] = {"rsync"}


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """A busy loop per CPU, started and killed here (never someone else's)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.fixture
def source() -> Iterator[Path]:
    """Small files another user (nobody) can read."""
    where = Path(tempfile.mkdtemp(prefix="eg-attrib-", dir="/tmp"))
    where.chmod(0o755)
    for i in range(3):
        (where / f"f{i}.bin").write_bytes(os.urandom(2000 + i))
    yield where
    shutil.rmtree(where, ignore_errors=True)


def _unnamed(event: Mapping, names: set[str | None]) -> bool:
    return event.get("process.name") not in names or event.get("user.name") != "nobody"


def test_short_lived_writers_are_named_under_load(loop_stick: Any, tmp_path: Path, source: Path,
                                                  cpu_hogs: None) -> None:
    stick: LoopStick = loop_stick(label=f"EGT{os.getpid() % 100000}", serial=f"EGT{os.getpid()}")
    config = AgentConfig(tags={str(tmp_path / "nothing"): ["x"]}, sensors=SensorSettings())
    with Running(config) as run:
        events = run.events
        stick.plug()
        point = stick.mount()
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": str(point)}))
        point.chmod(0o1777)  # nobody writes there, as a user on their own stick
        expected: dict[str, set[str | None]] = {}
        for i in range(ROUNDS):
            tgz, synced, copied = f"{point}/t{i}.tgz", f"{point}/r{i}", f"{point}/c{i}.bin"
            subprocess.run([*AS_NOBODY, "tar", "czf", tgz, "-C", str(source), "."], check=True)
            subprocess.run([*AS_NOBODY, "rsync", "-a", "--no-o", "--no-g", f"{source}/", synced + "/"],
                           check=True)
            subprocess.run([*AS_NOBODY, "cp", str(source / "f0.bin"), copied], check=True)
            expected[tgz] = {"tar", "gzip"}  # the bytes' writer, not the shell that closed it
            expected[copied] = {"cp"}
            for name in ("f0.bin", "f1.bin", "f2.bin"):
                expected[f"{synced}/{name}"] = RSYNC
        writes = events.wait_for(lambda e: e.get("event.action") == "file.write"
                                 and e.get("file.path") in expected, count=len(expected), timeout=60)
        by_path = {e["file.path"]: e for e in writes}
        unnamed = sorted((path.rsplit("/", 1)[1], e.get("process.name"), e.get("user.name"),
                          e.get("exfilguard.attribution"))
                         for path, e in by_path.items() if _unnamed(e, expected[path]))
        print(f"named {len(by_path) - len(unnamed)} of {len(by_path)} writes; unnamed: {unnamed}")
        assert not unnamed
