"""Real block devices for tests: a running systemd-udevd and loop-device USB sticks.

Fixtures (import them into a conftest.py to use them):
    udevd        session-scoped: starts systemd-udevd if none runs (skips when not root)
    loop_stick   factory: `loop_stick(label=..., serial=...)` -> lab.loopstick.LoopStick,
                 created (image, ext4, udev rule); removed at the end of the test
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.loopstick import LoopStick, ensure_udevd

IS_ROOT = os.geteuid() == 0
NEEDS = ("udevadm", "losetup", "mkfs.ext4", "mount")

root_only = pytest.mark.skipif(not IS_ROOT, reason="needs root: loop devices, mounts, fanotify, udevd")


def missing_tools() -> list[str]:
    """Programs the device tests need that are not installed (scripts/bootstrap installs them)."""
    return [tool for tool in NEEDS if shutil.which(tool) is None]


@pytest.fixture(scope="session")
def udevd() -> None:
    """A running systemd-udevd, started here if needed (as in CI, where nothing else starts it)."""
    if not IS_ROOT:
        pytest.skip("needs root to start systemd-udevd and make loop devices")
    missing = missing_tools()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run scripts/bootstrap)")
    ensure_udevd()


@pytest.fixture
def loop_stick(udevd: None, tmp_path: Path) -> Iterator[Callable[..., LoopStick]]:
    """Factory of loop-device USB sticks, each removed after the test whatever happened."""
    made: list[LoopStick] = []

    def make(**kwargs: Any) -> LoopStick:
        stick = LoopStick(tmp_path / f"stick{len(made)}", **kwargs)
        made.append(stick)
        stick.create()
        return stick

    yield make
    for stick in reversed(made):
        stick.remove()
