"""prevent.devices on real loop-device sticks announced by systemd-udevd: an unapproved stick is
set read-only before it is mounted (writes fail EROFS) or refused (cannot be mounted); an
approved serial is untouched and writable."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.prevent.devices import is_read_only
from common.agentconfig import AgentConfig, PreventSettings, SensorSettings
from lab.loopstick import LoopStick, LoopStickError
from tests.sensors.recorder import Running

pytestmark = pytest.mark.root


def _config(devices: str, allowed: list[str]) -> AgentConfig:
    prevent = PreventSettings.model_validate({"devices": devices, "allowed_devices": allowed})
    return AgentConfig(sensors=SensorSettings(fanotify="off"), prevent=prevent)


def _serial(tag: str) -> str:
    return f"EGP{tag}{os.getpid()}"


def test_unapproved_stick_is_read_only_and_an_approved_one_writable(
        loop_stick: Callable[..., LoopStick]) -> None:
    good, bad = _serial("OK"), _serial("RO")
    with Running(_config("read-only", [good])) as run:
        approved = loop_stick(label=f"OK{os.getpid() % 10000}", serial=good)
        other = loop_stick(label=f"RO{os.getpid() % 10000}", serial=bad)
        other.plug()
        found = run.events.wait_for(run.events.action("device.readonly", {"device.serial": bad}))
        assert "BLKROSET" in found[0]["event.reason"]
        assert is_read_only(other.device)
        point = other.mount()  # util-linux falls back to a read-only mount
        with pytest.raises(OSError) as err:
            (point / "x.bin").write_bytes(b"data")
        assert err.value.errno == errno.EROFS
        approved.plug()
        run.events.wait_for(run.events.action("device.attach", {"device.serial": good}))
        assert not is_read_only(approved.device)
        (approved.mount() / "ok.bin").write_bytes(b"data")
        assert (approved.mount_point / "ok.bin").read_bytes() == b"data"
        assert not run.events.matching(lambda e: e.get("device.serial") == good
                                       and e["event.action"] in ("device.readonly", "device.block"))


def test_block_refuses_the_mount(loop_stick: Callable[..., LoopStick], tmp_path: Path) -> None:
    bad = _serial("BL")
    with Running(_config("block", ["0000:0000"])) as run:
        stick = loop_stick(label=f"BL{os.getpid() % 10000}", serial=bad)
        stick.plug()
        found = run.events.wait_for(run.events.action("device.block", {"device.serial": bad}))
        assert "cannot be mounted" in found[0]["event.reason"]
        with pytest.raises(LoopStickError) as err:
            stick.mount()
        assert err.value.step == "mount"
    # the guard stopped, the hold and the flag go with it (loop devices are reused)
    assert not is_read_only(stick.device)
    stick.mount()
