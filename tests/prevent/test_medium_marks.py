"""The guard's permission mark goes on a stick's own file system, never on the one under it.

A real permission group (FAN_CLASS_CONTENT) and a real loop-device stick. A stick unmounted
before the guard handled its mount leaves the directory it was mounted on, on a system file
system: the mark used to be placed there by path, and FAN_OPEN_PERM on the root file system
makes every open on the machine wait for the agent's answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.prevent.permission import FAN_OPEN_PERM, PermissionGroup

pytestmark = pytest.mark.root


def _filesystem_marks(group: PermissionGroup) -> dict[int, int]:
    """The group's file-system marks, as the kernel lists them: {device number: mask}."""
    marks = {}
    for line in Path(f"/proc/self/fdinfo/{group.fd}").read_text().splitlines():
        # "fanotify sdev:800007 mflags:0 mask:10000 ignored_mask:0" (inode marks say ino: first)
        if line.startswith("fanotify sdev:"):
            fields = dict(item.split(":", 1) for item in line.split()[1:])
            major_minor = int(fields["sdev"], 16)
            marks[os.makedev(major_minor >> 20, major_minor & 0xFFFFF)] = int(fields["mask"], 16)
    return marks


def test_a_stick_gone_before_its_mark_leaves_the_file_system_under_it_unmarked(loop_stick: Any) -> None:
    stick = loop_stick(label="EGPMARK", serial=f"EGPMARK{os.getpid()}")
    stick.plug()
    point = stick.mount()
    group = PermissionGroup()
    try:
        dev = group.place_on_medium(str(point))
        assert dev == point.stat().st_dev != point.parent.stat().st_dev
        assert _filesystem_marks(group) == {dev: FAN_OPEN_PERM}
        # taken off only from the file system it was placed on
        assert group.place_on_medium(str(point), dev=dev + 1, remove=True) == -1
        assert group.place_on_medium(str(point), dev=dev, remove=True) == dev
        assert _filesystem_marks(group) == {}
        # a directory inside a mount is not its root: marked only when asked so (a GVfs share's
        # directory inside its FUSE mount)
        inner = point / "share"
        inner.mkdir()
        assert group.place_on_medium(str(inner)) == -1
        assert group.place_on_medium(str(inner), inside=True) == dev
        assert group.place_on_medium(str(inner), inside=True, remove=True) == dev
        inner.rmdir()
        stick.unmount()
        point.mkdir(parents=True)  # the directory the stick was mounted on, left behind
        under = point.stat().st_dev
        # the mount table said a stick was mounted here: nothing is marked
        assert group.place_on_medium(str(point)) == -1
        assert under not in _filesystem_marks(group)
        assert _filesystem_marks(group) == {}
    finally:
        group.close()
        if point.is_dir() and not os.path.ismount(point):
            point.rmdir()
