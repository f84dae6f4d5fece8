"""The shipped systemd units verify clean, keep their hardening, and score as documented."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import units

pytestmark = pytest.mark.skipif(
    not units.have_systemd_analyze(), reason="systemd-analyze missing (scripts/bootstrap installs systemd)"
)

# The scores docs/deploy.md reports; a change that weakens a unit must update both.
MAX_EXPOSURE = {"agent": 3.6, "collector": 1.5}  # agent: CAP_SYS_NICE (docs/deploy.md)


def unit_text(role: str) -> str:
    return units.UNITS[role].read_text(encoding="utf-8")


def service_section(role: str) -> dict[str, list[str]]:
    """Directive -> values of [Service] (repeated directives kept in order)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in unit_text(role).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("role", ["agent", "collector"])
def test_unit_verifies_clean(tmp_path: Path, role: str) -> None:
    name = f"exfilguard-{role}.service"
    units.stage_units(tmp_path, {name: unit_text(role)})
    done = units.verify(tmp_path, name)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "", done.stdout + done.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive and a bad value are reported."""
    broken = unit_text("agent").replace("ProtectSystem=strict", "ProtectSystem=strictest").replace(
        "NoNewPrivileges=yes", "NoNewPrivilege=yes"
    )
    units.stage_units(tmp_path, {"exfilguard-agent.service": broken})
    done = units.verify(tmp_path, "exfilguard-agent.service")
    assert "strictest" in done.stderr and "NoNewPrivilege" in done.stderr, done.stderr


def test_verify_needs_the_executable(tmp_path: Path) -> None:
    """Why the tests stage a root: verify checks that ExecStart's binary exists there."""
    name = "exfilguard-collector.service"
    units.stage_units(tmp_path, {name: unit_text("collector")})
    (tmp_path / units.exec_start(unit_text("collector")).lstrip("/")).unlink()
    done = units.verify(tmp_path, name)
    assert done.returncode != 0 and "not executable" in done.stderr


@pytest.mark.parametrize("role", ["agent", "collector"])
def test_unit_is_notify_with_watchdog_and_restart(role: str) -> None:
    service = service_section(role)
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"][0].endswith("s")
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ConfigurationDirectory"] == ["exfilguard"]
    assert service["ExecStart"][0].endswith(f"--config /etc/exfilguard/{role}.yaml")
    # /var/lib/exfilguard is the collector's; the agent's state is its own subdirectory.
    assert service["StateDirectory"] == (["exfilguard/agent"] if role == "agent" else ["exfilguard"])


def test_collector_runs_unprivileged() -> None:
    service = service_section("collector")
    assert service["User"] == ["exfilguard"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["PrivateUsers"] == ["yes"]


def test_agent_keeps_only_the_capabilities_it_needs() -> None:
    service = service_section("agent")
    assert "User" not in service  # root, for fanotify; the bounding set below is what it keeps
    assert set(service["CapabilityBoundingSet"][0].split()) == {
        "CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_LEASE",
        # prevention: notify-send as the user, and the quarantine removing files from sticks
        "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE",
        "CAP_SYS_NICE",  # the fanotify reader's niceness: /proc read before writers are gone
    }
    # writable only where prevention writes: the sticks and /sys/devices (`authorized`)
    assert service["ReadWritePaths"] == ["-/media -/run/media -/mnt /sys/devices"]
    assert service["ProtectKernelTunables"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    assert "AF_NETLINK" in service["RestrictAddressFamilies"][0]
    assert service["ProtectHome"] == ["read-only"]
    assert "fanotify_init" in service["SystemCallFilter"][0]


@pytest.mark.parametrize("role", ["agent", "collector"])
def test_exposure_score_stays_as_documented(tmp_path: Path, role: str) -> None:
    name = f"exfilguard-{role}.service"
    units.stage_units(tmp_path, {name: unit_text(role)})
    score = units.exposure(tmp_path, name)
    assert score <= MAX_EXPOSURE[role], f"{name} exposure {score} > {MAX_EXPOSURE[role]}"
    documented = (units.REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert f"{name}: {score}" in documented, f"docs/deploy.md does not report {name}: {score}"


def test_unit_files_parse_as_ini() -> None:
    for path in units.UNITS.values():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(path)
        assert parser.has_section("Install")


FANOTIFY_PROBE = r"""
import ctypes, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.fanotify_init(0x3, os.O_RDONLY)  # FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK
flags = 0x1 | {"mount": 0x10, "filesystem": 0x100}[sys.argv[1]]
assert fd >= 0 and libc.fanotify_mark(fd, flags, ctypes.c_uint64(0x8), -100, sys.argv[2].encode()) == 0
print("marked", flush=True)
poller = select.poll(); poller.register(fd, select.POLLIN)
if poller.poll(5000):
    efd = struct.unpack_from("IBBHQii", os.read(fd, 4096))[5]
    print(os.readlink(f"/proc/self/fd/{efd}"), flush=True)
else:
    print("no event", flush=True)
"""


@pytest.mark.root
@pytest.mark.parametrize("kind", ["mount", "filesystem"])
def test_fanotify_marks_from_the_units_mount_namespace(tmp_path: Path, kind: str) -> None:
    """ProtectSystem= gives the agent its own mount namespace, where a *mount* mark watches the
    namespace's copy of a mount and misses the user's writes; a *filesystem* mark sees them."""
    if os.geteuid() != 0:
        pytest.skip("needs root (fanotify, mount, unshare)")
    mnt = tmp_path / "stick"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stick", str(mnt)], check=True)
    try:
        probe = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave",
             sys.executable, "-c", FANOTIFY_PROBE, kind, str(mnt)],
            stdout=subprocess.PIPE, text=True,
        )
        assert probe.stdout is not None
        assert probe.stdout.readline().strip() == "marked"
        (mnt / "copy.db").write_text("secret", encoding="utf-8")  # written from the host namespace
        out, _ = probe.communicate(timeout=30)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    if kind == "mount":
        assert out.strip() == "no event"
    else:
        assert out.strip() == str(mnt / "copy.db")
