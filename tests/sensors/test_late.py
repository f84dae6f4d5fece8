"""A stick written while the agent was not running, plugged in after it started again: the copy is
reported late, with the window; what was written before the agent last ran is not."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from common.agentconfig import AgentConfig, Removable, SensorSettings
from tests.sensors.recorder import Running

pytestmark = pytest.mark.root


def test_a_copy_made_while_the_agent_was_down_is_reported_when_the_stick_is_first_seen(
        loop_stick: Any, tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    secret = db / "customers.db"
    secret.write_bytes(os.urandom(40_000))
    state = tmp_path / "state"
    state.mkdir()
    config = AgentConfig(tags={str(db): ["database"]}, state_dir=str(state),
                         sensors=SensorSettings(), removable=Removable(include_loop=True))
    stick = loop_stick(label=f"EGL{os.getpid() % 100000}", serial=f"EGLATE{os.getpid()}")
    stick.plug()
    point = stick.mount()
    old = point / "before.db"
    shutil.copyfile(secret, old)  # before the agent ever ran: not its business
    time.sleep(1.5)  # the scenario: the agent starts well after that copy (its window has a 1 s margin)
    with Running(config):
        pass
    stopped = time.time()
    assert float((state / "running-until").read_text()) <= stopped
    copied = point / "while-down.db"
    shutil.copyfile(secret, copied)
    stick.unmount()
    with Running(config) as run:
        events = run.events
        started = time.time()
        point = stick.mount()  # first seen in this run: examined for what changed meanwhile
        events.wait_for(events.action("device.mount", {"exfilguard.mount.point": str(point)}))
        late = events.wait_for(events.action("file.copy", {"file.path": str(point / copied.name)}))[0]
        assert late["exfilguard.late"] is True
        assert late["exfilguard.source.path"] == str(secret)
        assert late["exfilguard.copy.identified_by"] == "exact"
        assert late["device.serial"] == stick.serial
        start = dt.datetime.fromisoformat(late["exfilguard.late_window.start"]).timestamp()
        end = dt.datetime.fromisoformat(late["exfilguard.late_window.end"]).timestamp()
        assert start <= stopped <= end <= started + 1
        write = events.wait_for(events.action("file.write", {"file.path": str(point / copied.name)}))[0]
        assert write["exfilguard.late"] is True
        # a copy after the mount is a live one; the file from before the agent ran is not reported
        live = point / "live.db"
        subprocess.run(["cp", str(secret), str(live)], check=True)  # not this process: the sensors skip it
        copy = events.wait_for(events.action("file.copy", {"file.path": str(live)}))[0]
        assert "exfilguard.late" not in copy
        assert not events.matching(lambda e: e.get("file.path") == str(point / old.name))
        # reported once: the late scan and the scan of the mount's first moments do not overlap
        assert len(events.matching(events.action("file.copy", {"file.path": str(point / copied.name)}))) == 1
