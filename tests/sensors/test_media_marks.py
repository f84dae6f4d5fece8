"""A removable mount's mark is placed on, and taken off, its own file system only.

A real fanotify group with a file-system mark on the system file system holding the stick's
mount point (as the agent marks /, /tmp, /home for derived files), and a real loop-device stick.
A stick unmounted before the agent handled its mount leaves the directory under it, on the
system file system: the removable mark used to be placed there by path and taken off there when
the stick's removal was handled, which took close-after-write off the system file system's own
mark. No file written there was seen again, so nothing was derived in /tmp or /home from then on
(a staged archive, its split parts and 7z volumes copied to a stick were tied to nothing).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.sensors.fanotify import FanotifySensor
from tests.helpers import wait_for

pytestmark = pytest.mark.root


@dataclass
class _Watch:
    """A started sensor with the system file system under `point` marked, and what it reported."""

    sensor: FanotifySensor
    other: list[str] = field(default_factory=list)      # writes elsewhere (derived-file candidates)
    removable: list[str] = field(default_factory=list)  # writes on the stick


@contextlib.contextmanager
def _watching(point: Path, *, system: bool = True) -> Iterator[_Watch]:
    other: list[str] = []
    removable: list[str] = []
    sensor = FanotifySensor(tagged_as=lambda _p: None,
                            is_removable=lambda p: p.startswith(f"{point}/") and os.path.ismount(point),
                            on_tagged=lambda _a: None, on_removable=lambda a: removable.append(a.path),
                            on_other_write=lambda _a: None, wants_pid=lambda _pid: True,
                            on_other_now=lambda a: other.append(a.path))
    if system:
        sensor.mark_filesystem(str(point.parent))
    sensor.start()
    try:
        yield _Watch(sensor, other, removable)
    finally:
        sensor.stop()


def _write(path: Path) -> None:
    # by another process: the sensor leaves its own process's writes out
    subprocess.run(["cp", "/etc/hostname", str(path)], check=True, timeout=10)


def test_a_stick_gone_before_its_mark_leaves_the_system_file_systems_mark_alone(loop_stick: Any) -> None:
    stick = loop_stick(label="EGGONE", serial=f"EGGONE{os.getpid()}")
    stick.plug()
    point = stick.mount()
    stick.unmount()
    point.mkdir(parents=True)  # the directory the stick was mounted on, left behind
    try:
        with _watching(point) as watch:
            before = point / "before.txt"
            _write(before)
            wait_for(lambda: str(before) in watch.other, 10, "a write on the system file system")
            # the mount table said a stick was mounted here, and then that it went
            assert watch.sensor.mark_mount(str(point)) == ""
            watch.sensor.mark_mount(str(point), add=False)
            after = point / "after.txt"
            _write(after)
            wait_for(lambda: str(after) in watch.other, 10, "a later write on the system file system")
            assert watch.removable == []
    finally:
        for name in ("before.txt", "after.txt"):
            (point / name).unlink(missing_ok=True)
        point.rmdir()


def test_a_stick_unmarked_after_its_unmount_keeps_the_system_mark(loop_stick: Any) -> None:
    stick = loop_stick(label="EGMARKED", serial=f"EGMARKED{os.getpid()}")
    stick.plug()
    point = stick.mount()
    try:
        with _watching(point) as watch:
            assert watch.sensor.mark_mount(str(point)) == ""
            _write(point / "copy.txt")
            wait_for(lambda: str(point / "copy.txt") in watch.removable, 10, "the write on the stick")
            stick.unmount()
            point.mkdir(parents=True)
            watch.sensor.mark_mount(str(point), add=False)  # heard of after the unmount
            after = point / "after.txt"
            _write(after)
            wait_for(lambda: str(after) in watch.other, 10, "a later write on the system file system")
    finally:
        (point / "after.txt").unlink(missing_ok=True)
        if not os.path.ismount(point):
            point.rmdir()


def test_the_mark_of_a_mounted_stick_comes_off_with_it(loop_stick: Any) -> None:
    """Taken off while the stick is still mounted (the agent stops watching it): no more of its
    writes are reported."""
    stick = loop_stick(label="EGOFF", serial=f"EGOFF{os.getpid()}")
    stick.plug()
    point = stick.mount()
    with _watching(point, system=False) as watch:
        assert watch.sensor.mark_mount(str(point)) == ""
        _write(point / "one.txt")
        wait_for(lambda: str(point / "one.txt") in watch.removable, 10, "the write on the stick")
        watch.sensor.mark_mount(str(point), add=False)
        _write(point / "two.txt")
        _write(point / "three.txt")
        watch.sensor.mark_mount(str(point))  # watched again: the next write is the first seen
        _write(point / "four.txt")
        wait_for(lambda: str(point / "four.txt") in watch.removable, 10, "the write after the mark came back")
        assert watch.removable == [str(point / "one.txt"), str(point / "four.txt")]
