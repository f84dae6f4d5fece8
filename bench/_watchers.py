"""The C file watchers bench.sensors compares the agent with, each a real process on one tree.

  - `inotifywait -m -r` (inotify-tools): inotify watches on every directory of the tree;
  - `fatrace -c` (fanotify): a mount mark on the file system holding the tree, which is why
    the tree lives on a tmpfs of its own (a mark on / would count the whole machine's files);
  - `auditd` with a watch rule `-w TREE -p rwa` (what Wazuh's who-data sets up), writing
    its log in the work directory with the distribution's settings otherwise. Its cost is
    the daemon's CPU plus the kernel's `kauditd` thread, which exists only for audit.

Each counts the events it reported, and the CPU seconds (user + system) it used.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

AUDIT_KEY = "exfilguard-bench"


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += float(times.user + times.system)
    return total


class Watcher:
    """One comparison watcher: a process reporting events on a tree into a log file."""

    name = ""
    tool = ""  # the command that must exist

    def __init__(self, tree: Path, work: Path) -> None:
        self.tree = tree
        self.log = work / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.procs: list[psutil.Process] = []

    @classmethod
    def missing(cls) -> str:
        """The tool's name when it is not installed ('' when it is)."""
        return "" if shutil.which(cls.tool) else cls.tool

    def start(self) -> None:
        """Start watching; returns once the watcher is in place."""
        raise NotImplementedError

    def cpu(self) -> float:
        """CPU seconds used so far."""
        return _cpu(self.procs)

    def size(self) -> int:
        """Bytes logged so far (settles when the watcher has caught up)."""
        return self.log.stat().st_size if self.log.exists() else 0

    def events(self) -> int:
        """Events reported (one log line each)."""
        with self.log.open("rb") as fh:
            return sum(1 for _ in fh)

    def stop(self) -> None:
        """Stop the watcher."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Inotifywait(Watcher):
    """inotify-tools' `inotifywait -m -r`."""

    name = "inotifywait"
    tool = "inotifywait"

    def start(self) -> None:
        """Start it and wait for 'Watches established.'."""
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(["inotifywait", "-m", "-r", str(self.tree)], stdout=sink,
                                         stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # "Setting up watches..." then "Watches established."
            if b"established" in line:
                break
        self.procs = [psutil.Process(self.proc.pid)]


class Fatrace(Watcher):
    """`fatrace -c` in the tree's mount (fanotify, a mount mark)."""

    name = "fatrace"
    tool = "fatrace"

    def start(self) -> None:
        """Start it; a probe file's event shows the mark is in place."""
        self.proc = subprocess.Popen(["fatrace", "-c", "-o", str(self.log)], cwd=self.tree,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [psutil.Process(self.proc.pid)]
        probe = self.tree / ".probe-fatrace"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            probe.write_bytes(b"x")
            if self.size():
                break
            time.sleep(0.05)
        probe.unlink()
        settle(self.size)

    def events(self) -> int:
        """Events on the tree, the probe left out."""
        with self.log.open("rb") as fh:
            return sum(1 for line in fh if b".probe-fatrace" not in line)


class Auditd(Watcher):
    """auditd with one watch rule on the tree, logging into the work directory."""

    name = "auditd"
    tool = "auditd"

    def __init__(self, tree: Path, work: Path) -> None:
        super().__init__(tree, work)
        self.confdir = work / "audit"
        self._was_enabled = "0"

    @classmethod
    def missing(cls) -> str:
        """auditd and auditctl both."""
        return next((t for t in ("auditd", "auditctl") if not shutil.which(t)), "")

    def start(self) -> None:
        """Start a private auditd (unless one runs: then refuse) and add the watch rule."""
        status = _auditctl("-s")
        if re.search(r"^pid [1-9]", status, re.MULTILINE):
            raise RuntimeError("an audit daemon runs already: bench.sensors does not touch it")
        self._was_enabled = (re.search(r"^enabled (\d)", status, re.MULTILINE) or ["", "0"])[1]
        self.confdir.mkdir(mode=0o750)
        (self.confdir / "plugins.d").mkdir(mode=0o750)
        conf = Path("/etc/audit/auditd.conf").read_text() if Path("/etc/audit/auditd.conf").exists() else ""
        pairs = (line.split("=", 1) for line in conf.splitlines() if "=" in line and not line.startswith("#"))
        settings = {key.strip(): value.strip() for key, value in pairs}
        settings.update({"log_file": str(self.log), "plugin_dir": str(self.confdir / "plugins.d"),
                         "max_log_file_action": "ignore", "space_left_action": "ignore",
                         "admin_space_left_action": "ignore", "disk_full_action": "ignore",
                         "disk_error_action": "ignore", "log_group": "root"})
        path = self.confdir / "auditd.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        path.chmod(0o640)
        self.proc = subprocess.Popen(["auditd", "-n", "-c", str(self.confdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while f"pid {self.proc.pid}\n" not in _auditctl("-s"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("auditd did not register with the kernel")
            time.sleep(0.05)
        _auditctl("-w", str(self.tree), "-p", "rwa", "-k", AUDIT_KEY)
        self.procs = [psutil.Process(self.proc.pid)]
        self.procs += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "kauditd"]

    def events(self) -> int:
        """Audited syscalls under the rule's key."""
        needle = f'key="{AUDIT_KEY}"'.encode()
        with self.log.open("rb") as fh:
            return sum(1 for line in fh if line.startswith(b"type=SYSCALL") and needle in line)

    def stop(self) -> None:
        """Remove the rule, stop the daemon, leave the kernel's audit flag as it was."""
        with contextlib.suppress(subprocess.CalledProcessError):
            _auditctl("-W", str(self.tree), "-p", "rwa", "-k", AUDIT_KEY)
        super().stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _auditctl("-e", self._was_enabled)


def _auditctl(*args: str) -> str:
    return subprocess.run(["auditctl", *args], check=True, capture_output=True, text=True).stdout


def settle(
    measure: Callable[[], object], quiet: float = 0.5, limit: float = 30.0, poll: float = 0.05
) -> None:
    """Wait until `measure()` stops changing for `quiet` seconds (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    last, since = measure(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = measure()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


WATCHERS: tuple[type[Watcher], ...] = (Inotifywait, Fatrace, Auditd)


def tmpfs(point: Path, size_mib: int) -> None:
    """Mount a tmpfs of its own at `point` (fatrace's mount mark then sees only the tree)."""
    point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "egbench", str(point)],
                   check=True)


def untmpfs(point: Path) -> None:
    """Unmount what `tmpfs` mounted (lazily: a watcher may still hold it for a moment)."""
    subprocess.run(["umount", "-l", str(point)], check=False)
    with contextlib.suppress(OSError):
        point.rmdir()
