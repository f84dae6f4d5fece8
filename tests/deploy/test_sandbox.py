"""The real daemons under their units' restrictions: syscall filter, capability bounding set,
NoNewPrivileges and W^X (applied by tests/deploy/sandbox.py as systemd would, then exec).

The agent must still send READY/WATCHDOG, deliver events, and attribute a tagged file opened by
another user's process exactly (fanotify + /proc/<pid>/exe); root without CAP_SYS_PTRACE
cannot read that process's executable — which is why the unit keeps that capability.
(The collector runs as root with no capabilities here, not as its user: this test's Python
lives under /root, 0700.)
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.store import open_store
from tests.deploy import units
from tests.deploy.notify_socket import NotifySocket
from tests.helpers import start_collector, wait_for, write_collector_config

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="exfilguard-sandbox-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sandboxed(unit: Path, *command: str) -> list[str]:
    return [sys.executable, "-m", "tests.deploy.sandbox", str(unit), "--", *command]


def file_opens(store_path: str, path: str) -> list[dict[str, Any]]:
    """file.open events of `path` (open, not read: a read is reported at close, maybe after exit)."""
    store = open_store(store_path, readonly=True)
    try:
        return [dict(e) for e in store.events()
                if e.get("event.action") == "file.open" and e.get("file.path") == path]
    finally:
        store.close()


def need_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (capabilities, fanotify, another user's process)")
    for tool in ("systemd-analyze", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (scripts/bootstrap installs it)")
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp missing")


@pytest.mark.parametrize("capabilities", ["as shipped", "without CAP_SYS_PTRACE"])
def test_reading_another_users_executable_needs_cap_sys_ptrace(tmp_path: Path, capabilities: str) -> None:
    """Why the agent keeps CAP_SYS_PTRACE: root without it cannot read /proc/<pid>/exe of a user."""
    need_tools()
    unit = units.UNITS["agent"]
    if capabilities != "as shipped":
        unit = tmp_path / "agent-noptrace.service"
        unit.write_text(units.UNITS["agent"].read_text().replace(" CAP_SYS_PTRACE", ""))
    user = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"])
    try:
        # setpriv execs sleep in the same process; wait until the exec has happened.
        wait_for(lambda: Path(f"/proc/{user.pid}/comm").read_text().strip() == "sleep", what="sleep")
        done = subprocess.run(sandboxed(unit, "/usr/bin/readlink", f"/proc/{user.pid}/exe"),
                              cwd=units.REPO, capture_output=True, text=True, timeout=60, check=False)
    finally:
        user.kill()
        user.wait()
    if capabilities == "as shipped":
        assert done.returncode == 0 and done.stdout.strip().endswith("/sleep"), done.stderr
    else:
        assert done.returncode != 0 and done.stdout == ""


def test_daemons_work_under_their_units_restrictions(tmp_path: Path, shared_dir: Path) -> None:
    need_tools()
    agent_unit = units.UNITS["agent"]

    config = write_collector_config(tmp_path / "collector")
    address = yaml.safe_load(config.read_text())["listen"]
    secret = shared_dir / "tagged" / "customers.csv"
    secret.parent.mkdir(mode=0o755)
    secret.write_text("id,name\n1,alice\n")
    secret.chmod(0o644)
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text(yaml.safe_dump({
        "collector": address, "tls": {"insecure_loopback": True}, "state_dir": str(tmp_path / "agent"),
        "tags": {str(secret.parent): ["crown-jewels"]}, "sensors": {"fanotify": "on"},
        "heartbeat_seconds": 1,
    }))
    # The collector as the unit runs it, except the user: the test's Python lives under /root (0700).
    collector_cmd = sandboxed(units.UNITS["collector"], sys.executable, "-m", "collector.main")
    notify = NotifySocket(tmp_path)
    with start_collector(config, command=collector_cmd), (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            sandboxed(agent_unit, sys.executable, "-m", "agent.main", "--config", str(agent_yaml)),
            cwd=units.REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"},
        )
        try:
            notify.wait_for("READY=1", timeout=60)
            notify.wait_for("WATCHDOG=1", count=2)
            # Another user's long-lived shell opens and reads the tagged file.
            reader = subprocess.Popen(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                 f'exec 3<"{secret}"; read -r line <&3; sleep 30'],
            )
            try:
                store = str(tmp_path / "collector" / "collector.db")
                opens = wait_for(lambda: file_opens(store, str(secret)), timeout=30,
                                 what="the tagged file's open to be stored")
            finally:
                reader.kill()
                reader.wait()
        finally:
            agent.terminate()
            agent.wait(30)
            notify.close()
    agent_log = (tmp_path / "agent.log").read_text()
    assert "sensors=[" in agent_log and "fanotify" in agent_log.split("sensors=[")[1].split("]")[0]
    assert "Operation not permitted" not in agent_log, agent_log[-3000:]
    opened = opens[0]
    assert opened["user.id"] == "65534"
    assert opened["process.executable"] in {"/usr/bin/dash", "/bin/dash", "/usr/bin/bash", "/bin/bash"}
    assert opened["exfilguard.attribution"] == "exact"
