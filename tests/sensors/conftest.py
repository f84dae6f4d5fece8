"""Sensor tests use real udev, loop devices and mounts (see tests/devices.py)."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.devices import loop_stick, udevd

__all__ = ["base", "loop_stick", "udevd"]


@pytest.fixture
def base() -> Iterator[Path]:
    """Where tests/sensors/matrix.py's data goes: readable by another user (nobody), so not
    under pytest's private tmp directory; a scratch directory beside it, and one in /dev/shm
    (`shm` next to `data`)."""
    where = Path(tempfile.mkdtemp(prefix="eg-matrix-", dir="/tmp"))
    where.chmod(0o755)
    shm = Path(tempfile.mkdtemp(prefix="eg-matrix-", dir="/dev/shm"))
    (where / "shm").symlink_to(shm)
    (where / "scratch").mkdir()
    yield where / "data"
    shutil.rmtree(shm, ignore_errors=True)
    shutil.rmtree(where, ignore_errors=True)
