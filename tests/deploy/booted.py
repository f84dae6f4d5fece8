"""A real systemd as PID 1, booted from this machine's own OS, for testing the installed units.

The build machines run no systemd, so `systemd-nspawn -b` boots one in a container whose root
is an overlay of `/` with a tmpfs on top: the container sees this machine's OS, Python and the
source tree, and every write (the /opt venv, /etc/exfilguard, users, units) lands in the tmpfs,
so the host stays untouched. Commands run inside with `nsenter` into the container's
namespaces, talking to its systemd like an admin's shell would.

nspawn's own seccomp filter refuses fanotify (containers usually must not watch the host's file
systems); this container is ours and the agent needs it, so `--system-call-filter` allows
fanotify_init and fanotify_mark again. Everything else is nspawn's default confinement, which
only takes away from what the units get on a real host.

What an earlier install or a manual run left on this machine (`/var/lib/exfilguard`, the
units, `/etc/exfilguard` ...) must not decide the outcome: those paths are hidden from the
container by overlayfs whiteouts, so every boot starts from a host without ExfilGuard.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
# Hidden from the container when this machine holds them (see the module docstring).
HOST_STATE = (
    "/var/lib/exfilguard", "/var/log/exfilguard", "/etc/exfilguard", "/opt/exfilguard",
    "/etc/sysusers.d/exfilguard.conf",
    "/etc/systemd/system/exfilguard-collector.service", "/etc/systemd/system/exfilguard-agent.service",
)
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def hide_host_state(upper: Path, paths: tuple[str, ...] = HOST_STATE) -> list[str]:
    """Put an overlayfs whiteout (a 0/0 character device) in `upper` for each of `paths` that
    exists on this machine; the directories above it take the host's owner and mode. Returns
    the paths hidden."""
    hidden = []
    for path in paths:
        if not os.path.lexists(path):
            continue
        for parent in reversed(Path(path).parents[:-1]):  # /var, /var/lib, ... (not / itself)
            mirror = upper / str(parent).lstrip("/")
            if not mirror.exists():
                mirror.mkdir()
                info = parent.stat()
                os.chown(mirror, info.st_uid, info.st_gid)
                mirror.chmod(stat.S_IMODE(info.st_mode))
        os.mknod(upper / path.lstrip("/"), stat.S_IFCHR, os.makedev(0, 0))
        hidden.append(path)
    return hidden


def missing_reason() -> str | None:
    """Why a booted system cannot be had here, or None."""
    if os.geteuid() != 0:
        return "booting systemd in a container needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn missing (scripts/bootstrap installs systemd-container)"
    if not Path("/usr/lib/systemd/systemd").exists() and not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed (scripts/bootstrap installs it)"
    return None


class BootedHost:
    """This machine's OS booted under systemd in a throwaway container."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.layers = base / "layers"
        self.root = base / "root"
        self.log_path = base / "nspawn.log"
        self.name = f"egtest{os.getpid()}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self._mounted: list[Path] = []

    def boot(self, timeout: float = 90.0) -> BootedHost:
        """Mount the overlay, boot, and wait until systemd says the system is up."""
        self.layers.mkdir(parents=True)
        self.root.mkdir()
        # The upper layer must not be on the file system it overlays: a tmpfs of its own.
        self._mount(["-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs", str(self.layers)], self.layers)
        (self.layers / "upper").mkdir()
        (self.layers / "work").mkdir()
        hide_host_state(self.layers / "upper")
        options = f"lowerdir=/,upperdir={self.layers / 'upper'},workdir={self.layers / 'work'}"
        self._mount(["-t", "overlay", "-o", options, "overlay", str(self.root)], self.root)
        argv = [
            "systemd-nspawn", "--quiet", "--directory", str(self.root), "--machine", self.name,
            "--register=no", "--keep-unit", "--boot", "--console=pipe",
            "--system-call-filter=fanotify_init fanotify_mark",
            f"--bind={REPO}",  # the source tree, wherever the clone lives
        ]
        with self.log_path.open("wb") as log:
            self.nspawn = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while not self.pid1:
            self._fail_if_exited()
            children = psutil.Process(self.nspawn.pid).children()
            if children:
                self.pid1 = children[0].pid
            elif time.monotonic() > deadline:
                pytest.fail(f"systemd-nspawn started no init:\n{self.log()}")
            time.sleep(0.1)
        state = ""
        while state not in {"running", "degraded"}:
            self._fail_if_exited()
            if time.monotonic() > deadline:
                pytest.fail(f"the container's systemd did not come up (state {state!r}):\n{self.log()}")
            time.sleep(0.2)
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return self

    def run(self, *argv: str, check: bool = True, timeout: float = 300.0,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as root with a clean environment, like an admin's shell."""
        command = ["nsenter", "--target", str(self.pid1), "--mount", "--uts", "--ipc", "--net", "--pid",
                   "--", "env", "-i", f"PATH={_PATH}", "HOME=/root", "LANG=C.UTF-8", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              input=input_text)
        if check and done.returncode != 0:
            pytest.fail(f"in the container: {' '.join(argv)} exited {done.returncode}:\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show -p ...` of a unit, as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        """The unit's journal so far."""
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container (parents created)."""
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, input_text=text)

    def log(self) -> str:
        """What nspawn and the container's console printed."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def close(self) -> None:
        """Power off (bounded), then unmount everything; the host keeps nothing of it."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.pid1:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.run("systemctl", "poweroff", check=False, timeout=30)
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        for point in reversed(self._mounted):
            subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
        self._mounted.clear()

    def _mount(self, argv: list[str], point: Path) -> None:
        done = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"mount {' '.join(argv)} failed: {done.stderr.strip()}")
        self._mounted.append(point)

    def _fail_if_exited(self) -> None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            pytest.fail(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.log()}")
