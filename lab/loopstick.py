"""LoopStick: a "USB stick" made of a loop device, for tests, benchmarks and `exfilguard demo`.

An image file with a real ext4 file system, attached to a loop device; a udev rule (in
/run/udev/rules.d, matched on the image's path) gives the device a USB identity
(ID_BUS=usb, vendor, model, serial, ids), so the agent's udev code path is the one a real
stick takes; mounted at /media/<user>/<LABEL> like a desktop would. Needs root and a
running systemd-udevd (`ensure_udevd()` starts one where none runs, as in CI).

    with LoopStick(workdir, label="STICK", serial="EG-0001") as stick:
        stick.plug(); stick.mount()
        shutil.copy(src, stick.mount_point)
    # unmounted, detached, rule and image removed
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from common.errors import ExfilGuardError

RULES_DIR = Path("/run/udev/rules.d")
UDEVD_CANDIDATES = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd", "/sbin/udevd")
_TIMEOUT = 30


class LoopStickError(ExfilGuardError):
    """Creating or removing a loop-device stick failed at `step`."""

    def __init__(self, step: str, detail: str) -> None:
        self.step = step
        self.detail = detail
        super().__init__(f"loop stick: {step}: {detail}")


def _run(step: str, *argv: str, timeout: float = _TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoopStickError(step, str(exc)) from exc
    if done.returncode != 0:
        raise LoopStickError(step, f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def udevd_running() -> bool:
    """Whether a udev daemon answers on its control socket."""
    try:
        done = subprocess.run(["udevadm", "control", "--ping", "--timeout=2"], capture_output=True,
                              timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_udevd() -> bool:
    """Start systemd-udevd (daemonised) unless one runs, then replay block devices into its
    database. Returns True if this call started it. Raises LoopStickError if it cannot."""
    started = False
    if not udevd_running():
        daemon = next((c for c in UDEVD_CANDIDATES if Path(c).exists()), None)
        if daemon is None:
            raise LoopStickError("udevd", "systemd-udevd not installed (apt-get install udev)")
        _run("udevd", daemon, "--daemon")
        deadline = time.monotonic() + _TIMEOUT
        while not udevd_running():
            if time.monotonic() > deadline:
                raise LoopStickError("udevd", "systemd-udevd did not answer after starting")
            time.sleep(0.1)
        started = True
        _run("udev trigger", "udevadm", "trigger", "--subsystem-match=block", "--action=change")
    _run("udev settle", "udevadm", "settle", f"--timeout={_TIMEOUT}")
    return started


class LoopStick:
    """A loop-device USB stick: `plug()`, `mount()`, `unmount()`, `unplug()`, `remove()`."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        label: str = "EXFILSTICK",
        serial: str = "EG0000000001",
        vendor: str = "ExfilGuard",
        model: str = "Test_Stick",
        vendor_id: str = "1d6b",
        product_id: str = "0104",
        size_mib: int = 64,
        user: str | None = None,
        media_root: str = "/media",
    ) -> None:
        for name, value in (("label", label), ("serial", serial), ("vendor", vendor), ("model", model)):
            if not value or any(c in value for c in "\"\\/\n ") or len(value) > 64:
                raise LoopStickError("config", f"{name} {value!r}: use letters, digits, - _ . only")
        self.workdir = Path(workdir)
        self.label = label[:16]  # ext4 label limit
        self.serial = serial
        self.udev_identity = {  # the properties udev gives the device: those of a USB stick
            "ID_BUS": "usb", "ID_VENDOR": vendor, "ID_MODEL": model, "ID_SERIAL_SHORT": serial,
            "ID_SERIAL": f"{vendor}_{model}_{serial}", "ID_VENDOR_ID": vendor_id, "ID_MODEL_ID": product_id,
        }
        self.size_mib = size_mib
        self.user = user or os.environ.get("SUDO_USER") or "root"
        self.image = (self.workdir / f"{serial}.img").resolve()
        self.rule = RULES_DIR / f"59-exfilguard-loopstick-{serial}.rules"
        self.mount_point = Path(media_root) / self.user / self.label
        self.device = ""  # /dev/loopN once plugged

    # -------------------------------------------------------------- steps

    def create(self) -> None:
        """Make the image with an ext4 file system and install the udev identity rule."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as fh:
            fh.truncate(self.size_mib << 20)
        lazy = "lazy_itable_init=1,lazy_journal_init=1"
        _run("mkfs", "mkfs.ext4", "-q", "-F", "-L", self.label, "-E", lazy, str(self.image))
        RULES_DIR.mkdir(parents=True, exist_ok=True)
        self.rule.write_text(
            "# ExfilGuard test stick: a loop device that udev describes as a USB stick\n"
            f'SUBSYSTEM=="block", KERNEL=="loop*", ATTR{{loop/backing_file}}=="{self.image}", '
            + ", ".join(f'ENV{{{key}}}="{value}"' for key, value in self.udev_identity.items()) + "\n"
        )
        _run("udev reload", "udevadm", "control", "--reload")

    def plug(self) -> str:
        """Attach the image to a free loop device (udev sees `change`); returns /dev/loopN."""
        if not self.image.exists():
            self.create()
        # A loop device keeps the read-only flag an earlier user set (`blockdev --setro`, an agent
        # enforcing read-only devices), so the free device is made writable *before* the image
        # is attached: an agent that sets the new stick read-only on udev's event must win.
        for _attempt in range(10):
            free = _run("losetup", "losetup", "--find")
            _run("blockdev", "blockdev", "--setrw", free)
            try:
                _run("losetup", "losetup", free, str(self.image))
            except LoopStickError:
                continue  # taken meanwhile by another stick being plugged
            self.device = free
            break
        else:
            raise LoopStickError("losetup", f"no free loop device for {self.image} after 10 attempts")
        _run("udev settle", "udevadm", "settle", f"--timeout={_TIMEOUT}")
        return self.device

    def mount(self) -> Path:
        """Mount at /media/<user>/<LABEL>, owned by the user, as a desktop would."""
        if not self.device:
            self.plug()
        self.mount_point.mkdir(parents=True, exist_ok=True)
        _run("mount", "mount", "-t", "ext4", "-o", "nosuid,nodev", self.device, str(self.mount_point))
        with contextlib.suppress(KeyError, OSError):
            shutil.chown(self.mount_point, user=self.user)
        return self.mount_point

    def unmount(self) -> None:
        """Unmount if mounted (retrying while a process still holds it)."""
        if not os.path.ismount(self.mount_point):
            return
        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                _run("umount", "umount", str(self.mount_point))
                break
            except LoopStickError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with contextlib.suppress(OSError):
            self.mount_point.rmdir()

    def unplug(self) -> None:
        """Detach the loop device (udev sees `change` with size 0)."""
        if self.device:
            _run("losetup detach", "losetup", "-d", self.device)
            self.device = ""
            _run("udev settle", "udevadm", "settle", f"--timeout={_TIMEOUT}")

    def remove(self) -> None:
        """Undo everything: unmount, detach, delete rule and image. Safe to call twice."""
        errors: list[LoopStickError] = []
        for step in (self.unmount, self.unplug):
            try:
                step()
            except LoopStickError as exc:
                errors.append(exc)
        if self.rule.exists():
            self.rule.unlink()
            with contextlib.suppress(LoopStickError):
                _run("udev reload", "udevadm", "control", "--reload")
        with contextlib.suppress(FileNotFoundError):
            self.image.unlink()
        if errors:
            raise errors[0]

    def __enter__(self) -> LoopStick:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()
