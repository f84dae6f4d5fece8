"""A real network share for tests: sshd on loopback, mounted with sshfs (FUSE).

    with SshShare(tmp_path) as share:        # sshd -D on a free loopback port, keys of its own
        point = share.mount(tmp_path / "mnt")  # as root, allow_other: every user may write
        share.mount(where, user="nobody")    # a user's own mount: root may not look in
        ...                                  # unmounted and sshd stopped at exit, whatever happened

The kernel has FUSE but no nfs or cifs modules here; sshfs is a network file system that
users really mount, and the agent sees it as mountinfo names it (`fuse.sshfs`,
`root@127.0.0.1:/path`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
NEEDS = (SSHD, "sshfs", "ssh-keygen", "fusermount")


def missing_tools() -> list[str]:
    """What the share needs that is not installed (scripts/bootstrap installs it)."""
    return [tool for tool in NEEDS if shutil.which(tool) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SshShare:
    """sshd serving `export` over SFTP on 127.0.0.1, and the sshfs mounts made of it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.export = work / "export"
        self.port = _free_port()
        self.mounts: list[Path] = []
        self._sshd: subprocess.Popen[bytes] | None = None

    @property
    def source(self) -> str:
        """The share as mountinfo names it."""
        return f"root@127.0.0.1:{self.export}"

    def __enter__(self) -> SshShare:
        self.export.mkdir(parents=True)
        keys = self.work / "keys"
        keys.mkdir(mode=0o755)
        for name in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)],
                           check=True)
        config = self.work / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
            f"AuthorizedKeysFile {keys / 'user.pub'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {self.work / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
        self._sshd = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(self.work / "sshd.log")])
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self._sshd.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                log = (self.work / "sshd.log").read_text(errors="replace")
                raise RuntimeError(f"sshd did not start: {log}")
            time.sleep(0.02)
        return self

    def mount(self, point: Path, user: str = "") -> Path:
        """Mount the share at `point`: as root for everyone (allow_other), or as `user` only."""
        point.mkdir(parents=True, exist_ok=True)
        key = self.work / "keys" / "user"
        if user:  # ssh takes only a key its user owns and nobody else may read
            key = point.parent / f".{point.name}.key"
            shutil.copy(self.work / "keys" / "user", key)
            shutil.chown(key, user)
        options = (f"IdentityFile={key},port={self.port},"
                   "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR")
        command = ["sshfs", "-o", options + ("" if user else ",allow_other"), self.source, str(point)]
        if user:
            shutil.chown(point, user)
            command = ["runuser", "-u", user, "--", *command]
        subprocess.run(command, check=True, timeout=20)  # returns once mounted (sshfs daemonises)
        self.mounts.append(point)
        return point

    def __exit__(self, *exc: object) -> None:
        for point in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
        self.mounts.clear()
        if self._sshd is not None:
            self._sshd.terminate()
            try:
                self._sshd.wait(10)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait()
            self._sshd = None


def readable_by_all(path: Path) -> None:
    """Let another user (nobody) read a tree made by root."""
    for where in (path, *path.rglob("*")):
        where.chmod(0o755 if where.is_dir() else 0o644)
