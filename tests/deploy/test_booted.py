"""The shipped units under a real systemd (PID 1 in a container booted from this machine's OS):
`exfilguard setup --enable` installs and starts both daemons, Type=notify readiness, the agent's
exact attribution inside its hardened unit, the watchdog restarting a wedged collector,
Restart=on-failure, a clean stop, no restart loop on a bad config, and the exposure scores."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.booted import REPO, BootedHost, hide_host_state, missing_reason
from tests.deploy.test_units import MAX_EXPOSURE
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]

CLI = f"{REPO}/.venv/bin/exfilguard"  # the admin's copy of the tool, run inside the container
CONFIG = "/etc/exfilguard/collector.yaml"
UNITS = ("exfilguard-collector.service", "exfilguard-agent.service")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedHost]:
    booted = BootedHost(tmp_path_factory.mktemp("booted"))
    try:
        booted.boot()
        # The default agent.yaml tags /srv/db: give it a database before the agent starts.
        booted.write("/srv/db/customers.csv", "id,name\n1,Alice\n")
        booted.run("chmod", "-R", "a+rX", "/srv/db")
        # The admin first tried the collector by hand as root (the docs allow it): its state
        # is root's, 0700. Setup must hand it to the service user, or the service cannot start.
        booted.run("install", "-d", "-m", "0700", "/var/lib/exfilguard/evidence")
        for role in ("collector", "agent"):
            booted.run(CLI, "setup", role, "--source", str(REPO), "--enable", timeout=900)
        yield booted
    finally:
        booted.close()


def _active(host: BootedHost, unit: str) -> bool:
    return host.run("systemctl", "is-active", unit, check=False).stdout.strip() == "active"


def _events(host: BootedHost) -> list[dict[str, Any]]:
    out = host.run(CLI, "export", "--config", CONFIG, "--format", "jsonl", "--out", "-",
                   "--manifest", "/tmp/export.manifest.json", "--no-progress").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_setup_enable_starts_both_daemons_ready_under_systemd(host: BootedHost) -> None:
    for unit in UNITS:
        wait_for(lambda unit=unit: _active(host, unit), 60, f"{unit} active")  # type: ignore[misc]
        props = host.show(unit, "Type", "StatusText", "WatchdogUSec", "User", "NRestarts")
        assert props["Type"] == "notify" and props["NRestarts"] == "0"
        assert props["WatchdogUSec"] == "30s"
        assert props["StatusText"], f"{unit} sent READY without a STATUS line"
    assert host.show(UNITS[0], "User")["User"] == "exfilguard"
    # The agent reached the collector: the fleet registry, read by the admin CLI.
    def connected() -> bool:
        out = host.run(CLI, "agents", "--json", "--config", CONFIG, check=False).stdout
        return out.strip().startswith(("[", "{")) and '"connected": true' in out
    wait_for(connected, 60, "the agent connected in `exfilguard agents`")
    # The collector runs from a venv the unit can see: not on an interpreter under /root.
    venv_cfg = host.run("cat", "/opt/exfilguard/venv/pyvenv.cfg").stdout
    home = re.search(r"^home = (.+)$", venv_cfg, re.MULTILINE)
    assert home and not home.group(1).startswith(("/root", "/home")), venv_cfg


def test_the_agent_attributes_a_tagged_read_exactly_inside_its_hardened_unit(host: BootedHost) -> None:
    wait_for(lambda: "fanotify" in host.journal("exfilguard-agent.service"), 60, "the agent's start line")
    assert re.search(r"sensors=\[[^\]]*fanotify", host.journal("exfilguard-agent.service"))
    # Another user's process, started by this systemd like a login session would be. It keeps
    # the file open a while: a reader gone (and reaped) before the agent reads its /proc entry is
    # known by pid only, which a cat of a small file makes a race.
    host.run("systemd-run", "--wait", "--quiet", "--property=User=nobody",
             "--property=SuccessExitStatus=124", "timeout", "3", "tail", "-f", "/srv/db/customers.csv")

    def opened() -> list[dict[str, Any]]:
        return [e for e in _events(host) if e.get("event.action") == "file.open"
                and e.get("file.path") == "/srv/db/customers.csv" and e.get("user.name") == "nobody"]

    event = wait_for(opened, 60, "file.open of /srv/db/customers.csv by nobody")[0]
    assert event["process.executable"] == "/usr/bin/tail"
    assert event["exfilguard.attribution"] == "exact"
    assert event["tags"] == ["database", "crown-jewels"]


def test_the_watchdog_restarts_a_wedged_collector(host: BootedHost) -> None:
    # A short watchdog for the test; the collector reads WATCHDOG_USEC and pings at half of it.
    host.write("/run/systemd/system/exfilguard-collector.service.d/test.conf",
               "[Service]\nWatchdogSec=3s\nWatchdogSignal=SIGKILL\nRestartSec=1s\n")
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "restart", UNITS[0])
    wait_for(lambda: _active(host, UNITS[0]), 60, "collector active again")
    before = host.show(UNITS[0], "MainPID", "NRestarts")
    # Alive for a while on its own pings: no false watchdog timeouts.
    with pytest.raises(TimeoutError):
        wait_for(lambda: host.show(UNITS[0], "MainPID")["MainPID"] != before["MainPID"], 7, "no restart")
    host.run("kill", "-STOP", before["MainPID"])  # wedged: alive, but no more pings
    wait_for(lambda: int(host.show(UNITS[0], "NRestarts")["NRestarts"]) > int(before["NRestarts"]), 60,
             "a restart by the watchdog")
    assert "Watchdog timeout" in host.journal(UNITS[0])
    wait_for(lambda: _active(host, UNITS[0]), 60, "collector active after the watchdog restart")
    host.run("rm", "-r", "/run/systemd/system/exfilguard-collector.service.d")
    host.run("systemctl", "daemon-reload")


def test_a_killed_agent_is_restarted_and_a_stopped_one_exits_cleanly(host: BootedHost) -> None:
    unit = UNITS[1]
    before = host.show(unit, "MainPID", "NRestarts")
    host.run("kill", "-9", before["MainPID"])
    wait_for(lambda: int(host.show(unit, "NRestarts")["NRestarts"]) > int(before["NRestarts"]), 60,
             "Restart=on-failure after kill -9")
    wait_for(lambda: _active(host, unit), 60, "agent active again")
    host.run("systemctl", "stop", unit)
    props = host.show(unit, "ActiveState", "Result", "ExecMainStatus")
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == ("inactive", "success", "0")
    wait_for(lambda: any(e.get("event.action") == "agent.stop" for e in _events(host)), 60,
             "agent.stop delivered before the agent exited")
    host.run("systemctl", "start", unit)
    wait_for(lambda: _active(host, unit), 60, "agent active after start")


def test_a_bad_config_fails_once_without_a_restart_loop(host: BootedHost) -> None:
    unit = UNITS[1]
    good = host.run("cat", "/etc/exfilguard/agent.yaml").stdout
    host.write("/etc/exfilguard/agent.yaml", good + "no_such_key: 1\n")
    try:
        host.run("systemctl", "restart", unit, check=False)
        wait_for(lambda: host.show(unit, "ActiveState")["ActiveState"] == "failed", 60, "the agent failed")
        props = host.show(unit, "ExecMainStatus", "NRestarts")
        assert props["ExecMainStatus"] == "2"
        assert props["NRestarts"] == "0", "a config error must not be retried every few seconds"
        assert "no_such_key" in host.journal(unit)  # the error names the key for the admin
    finally:
        host.write("/etc/exfilguard/agent.yaml", good)
        host.run("systemctl", "reset-failed", unit, check=False)
        host.run("systemctl", "start", unit)
    wait_for(lambda: _active(host, unit), 60, "agent active with its good config")


def test_exposure_scores_of_the_running_units(host: BootedHost) -> None:
    out = host.run("systemd-analyze", "security", "--no-pager", *UNITS).stdout
    scores = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+\.service)\s+(\d+\.\d+)", out, re.M)}
    # the limits docs/deploy.md reports, as the unit files' own test holds them
    assert scores[UNITS[0]] <= MAX_EXPOSURE["collector"] and scores[UNITS[1]] <= MAX_EXPOSURE["agent"], out


def test_uninstall_stops_and_removes_both(host: BootedHost) -> None:
    for role in ("agent", "collector"):
        host.run(CLI, "setup", role, "--uninstall")
    for unit in UNITS:
        assert host.run("systemctl", "is-active", unit, check=False).stdout.strip() in {"inactive", "unknown"}
        assert host.run("test", "-e", f"/etc/systemd/system/{unit}", check=False).returncode == 1
    assert host.run("test", "-e", "/etc/exfilguard/collector.yaml", check=False).returncode == 0  # kept


def test_what_this_machine_holds_is_hidden_from_the_booted_host(tmp_path: Path) -> None:
    """The container must not see a /var/lib/exfilguard (or units, configs) this machine holds."""
    held = tmp_path / "held" / "exfilguard"
    (held / "evidence").mkdir(parents=True, mode=0o700)
    layers, merged = tmp_path / "layers", tmp_path / "merged"
    layers.mkdir()
    merged.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(layers)], check=True)
    try:
        (layers / "upper").mkdir()
        (layers / "work").mkdir()
        assert hide_host_state(layers / "upper", (str(held), str(tmp_path / "absent"))) == [str(held)]
        options = f"lowerdir=/,upperdir={layers / 'upper'},workdir={layers / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", str(merged)], check=True)
        try:
            inside = merged / str(held).lstrip("/")
            assert not inside.exists() and inside.parent.is_dir()
            assert inside.parent.stat().st_mode == held.parent.stat().st_mode
        finally:
            subprocess.run(["umount", str(merged)], check=True)
    finally:
        subprocess.run(["umount", "--lazy", str(layers)], check=False)
