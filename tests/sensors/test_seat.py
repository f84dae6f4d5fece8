"""Who was at the seat when a stick was plugged in: `device.attach` names the user of seat0's
active session (agent/sensors/seat.py), read from files in logind's format, with a real stick."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sensors.devices import DeviceSensor
from agent.sensors.media import RemovableMedia
from agent.sensors.seat import seat_user
from common.agentconfig import AgentConfig
from lab.loopstick import LoopStick
from tests.sensors.recorder import Recorder

NOBODY = 65534  # an account every Debian system has


def _logind(run: Path, seat: str | None, sessions: dict[str, str]) -> Path:
    """A /run/systemd as logind writes it: seats/seat0 (`seat`) and sessions/ID."""
    (run / "seats").mkdir(parents=True, exist_ok=True)
    (run / "sessions").mkdir(parents=True, exist_ok=True)
    if seat is None:
        (run / "seats" / "seat0").unlink(missing_ok=True)
    else:
        (run / "seats" / "seat0").write_text("# This is private data. Do not parse.\n" + seat)
    for session, text in sessions.items():
        (run / "sessions" / session).write_text(text)
    return run


def test_the_active_sessions_user_of_seat0_is_read_as_logind_writes_it(tmp_path: Path) -> None:
    run = _logind(tmp_path / "a", "IS_SEAT0=1\nACTIVE=c7\nACTIVE_UID=1000\nUIDS=1000 0\n",
                  {"c7": "UID=1000\nUSER=alice\nACTIVE=1\nSEAT=seat0\n"})  # fmt: skip
    assert seat_user(str(run)) == (1000, "alice")
    # No ACTIVE_UID (older logind): from the session; a uid the session does not match: from passwd.
    run = _logind(tmp_path / "b", "ACTIVE=4\n", {"4": f"UID={NOBODY}\nUSER=nobody\n"})
    assert seat_user(str(run)) == (NOBODY, "nobody")
    run = _logind(tmp_path / "c", f"ACTIVE=4\nACTIVE_UID={NOBODY}\n", {"4": "UID=1\nUSER=daemon\n"})
    assert seat_user(str(run)) == (NOBODY, "nobody")
    for seat in ("IS_SEAT0=1\nCAN_GRAPHICAL=1\n", "ACTIVE=../../etc\n", "ACTIVE_UID=x\n", None):
        assert seat_user(str(_logind(tmp_path / "d", seat, {}))) is None  # nobody at the seat
    assert seat_user(str(tmp_path / "no-logind")) is None


@pytest.mark.root
def test_device_attach_names_the_user_at_the_seat_and_detach_nobody_after_logout(
    loop_stick: Callable[..., LoopStick], tmp_path: Path
) -> None:
    seat = f"ACTIVE=c2\nACTIVE_UID={NOBODY}\n"
    run = _logind(tmp_path / "run", seat, {"c2": f"UID={NOBODY}\nUSER=nobody\n"})
    events = Recorder()
    sensor = DeviceSensor(RemovableMedia(AgentConfig().removable), events, sessions=str(run))
    serial = f"EGSEAT{os.getpid()}"
    sensor.start()
    try:
        stick = loop_stick(label="SEAT", serial=serial)
        stick.plug()
        attach = events.wait_for(events.action("device.attach", {"device.serial": serial}))[0]
        assert (attach["user.name"], attach["user.id"]) == ("nobody", str(NOBODY))
        _logind(run, "IS_SEAT0=1\n", {})  # logged out: nobody at the seat
        stick.unplug()
        detach = events.wait_for(events.action("device.detach", {"device.serial": serial}))[0]
        assert "user.name" not in detach and "user.id" not in detach
    finally:
        sensor.stop()
