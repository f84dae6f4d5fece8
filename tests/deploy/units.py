"""Helpers to check the shipped systemd units: a staging root that `systemd-analyze` can verify."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNITS = {role: REPO / "systemd" / f"exfilguard-{role}.service" for role in ("agent", "collector")}
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def have_systemd_analyze() -> bool:
    """True when the `systemd` package's analyzer is installed (scripts/bootstrap installs it)."""
    return shutil.which("systemd-analyze") is not None


def exec_start(unit_text: str) -> str:
    """The binary of a unit's ExecStart= line."""
    match = re.search(r"^ExecStart=[-@:+!]*(\S+)", unit_text, re.MULTILINE)
    assert match, "unit has no ExecStart="
    return match.group(1)


def prepare_root(root: Path) -> None:
    """Give a staging root systemd's own unit files (verify resolves sysinit.target etc. there)."""
    target = root / "usr/lib/systemd/system"
    if target.exists():
        return
    source = next((d for d in SYSTEM_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    assert source is not None, "systemd's unit files are not installed"
    shutil.copytree(source, target, symlinks=True)


def stage_units(root: Path, units: dict[str, str]) -> None:
    """Install unit texts under root/etc/systemd/system, with a stub executable for each ExecStart."""
    prepare_root(root)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text, encoding="utf-8")
        binary = root / exec_start(text).lstrip("/")
        if not binary.exists():
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            binary.chmod(0o755)


def verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify --root=ROOT names...` (no systemd as PID 1 needed)."""
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *names],
        capture_output=True, text=True, timeout=60, check=False,
    )


def exposure(root: Path, name: str) -> float:
    """The overall exposure score of `systemd-analyze security --offline=true`."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", name],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = _EXPOSURE.search(done.stdout + done.stderr)
    assert match, f"no exposure score in: {done.stdout[-500:]} {done.stderr[-500:]}"
    return float(match.group(1))
