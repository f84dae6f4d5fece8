"""Install (and uninstall) ExfilGuard on a host: venv, configs, service user, directories, units.

`Installation(role, ...)` does what `exfilguard setup agent|collector` promises:

    /opt/exfilguard/venv                    the package, pip-installed from the source tree
    /etc/exfilguard/<role>.yaml             default config, written only if absent (0600/0640)
    /etc/exfilguard/policies/               shipped policies (collector), only if absent
    /etc/sysusers.d/exfilguard.conf         the collector's system user, applied with systemd-sysusers
    /var/lib/exfilguard[/agent]             state: the collector's (with pki/), the agent's below it
    /var/log/exfilguard                     the collector's JSONL alerts
    /etc/systemd/system/exfilguard-<role>.service

State left by a collector run by hand as root (the docs allow a first try that way) is
adopted: everything root owns under the collector's state and log directories (never the
agent's `/var/lib/exfilguard/agent`) is handed to the service user, without following
symlinks; an entry owned by anyone else, or a file with more than one hard link, is refused
with its path, since the service could not use it (or must not be given it).

Every step is idempotent: files that are ours (units, docs) are rewritten only if they
changed; files that are the admin's (configs, policies, state) are never overwritten.
`uninstall()` removes units and the venv (unless the other role still uses it) and keeps
configs and state; `purge=True` removes those too. The service user is kept: a reused UID
would inherit whatever files it still owns.

Everything happens under `root` (default /), so a test or an image build can stage an
install in a directory; systemctl runs only when root is / and systemd is PID 1.

Errors: InstallError (step, message) for any step that fails, with the tool output that says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ExfilGuardError

ROLES = ("agent", "collector")
DEFAULT_PREFIX = "/opt/exfilguard"
SERVICE_USER = "exfilguard"
_UNIT_PREFIX = "/opt/exfilguard"  # what the shipped units say; rewritten for another --prefix
_PIP_TIMEOUT_SECONDS = 900
# ProtectHome= hides these from the services (the collector's entirely): a venv built on an
# interpreter under them (pyenv in /root, say) fails to start with status 203/EXEC.
_HIDDEN_FROM_SERVICES = ("/root", "/home", "/run/user")

COLLECTOR_CONFIG = """\
# /etc/exfilguard/collector.yaml — written by `exfilguard setup collector`, never overwritten.
# Every key is described in examples/collector.yaml and docs/deploy.md. Unknown keys are errors.

listen: 127.0.0.1:50051            # agents' gRPC port; for a fleet: 0.0.0.0:50051 with the tls below
tls:
  insecure_loopback: true          # plaintext, allowed only on a loopback listen address
  # mTLS for a fleet (see docs/deploy.md, "Certificates"):
  # cert: /var/lib/exfilguard/pki/collector.crt
  # key: /var/lib/exfilguard/pki/collector.key
  # client_ca: /var/lib/exfilguard/pki/ca.crt
  # crl: /var/lib/exfilguard/pki/crl.pem           # `exfilguard certs revoke` takes effect at once
# enrollment:                      # agents with a one-time token get their certificate here
#   listen: 0.0.0.0:50052
#   pki_dir: /var/lib/exfilguard/pki
store: /var/lib/exfilguard/collector.db   # a path means SQLite; or postgresql://...
state_dir: /var/lib/exfilguard            # signing key, fleet state
policies: [/etc/exfilguard/policies]
timezone: UTC                      # for after-hours conditions
alerts:
  - type: jsonl
    path: /var/log/exfilguard/alerts.jsonl
log_level: info
"""

SYSUSERS = f"""\
# The ExfilGuard collector's service user (installed by `exfilguard setup collector`).
u {SERVICE_USER} - "ExfilGuard collector" /var/lib/exfilguard /usr/sbin/nologin
"""


class InstallError(ExfilGuardError):
    """A step of the installation failed; `step` names it."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"{step}: {message}")


@dataclass
class Installation:
    """One role's installation under `root` (a staging directory in tests, / on a real host)."""

    role: str
    source: Path
    root: Path = Path("/")
    prefix: str = DEFAULT_PREFIX
    pip_options: Sequence[str] = ()
    python: str | None = None  # the interpreter to build the venv on; default: see service_python()
    actions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InstallError("role", f"expected agent or collector, not {self.role!r}")
        if not self.prefix.startswith("/"):
            raise InstallError("prefix", f"{self.prefix!r} must be an absolute path")
        if not (self.source / "pyproject.toml").is_file() or not (self.source / "systemd").is_dir():
            raise InstallError("source", f"{self.source} is not an ExfilGuard source tree (pass --source)")

    # ------------------------------------------------------------------ paths

    def path(self, absolute: str) -> Path:
        """`absolute` under the installation root."""
        return self.root / absolute.lstrip("/")

    @property
    def venv(self) -> Path:
        """The virtual environment both daemons run from."""
        return self.path(f"{self.prefix}/venv")

    def unit_path(self, role: str | None = None) -> Path:
        """Where the role's unit goes."""
        return self.path(f"/etc/systemd/system/exfilguard-{role or self.role}.service")

    @property
    def config_path(self) -> Path:
        """The role's config file."""
        return self.path(f"/etc/exfilguard/{self.role}.yaml")

    def _state_dirs(self) -> list[str]:
        if self.role == "agent":
            return ["/var/lib/exfilguard/agent"]
        return ["/var/lib/exfilguard", "/var/lib/exfilguard/pki", "/var/log/exfilguard"]

    @property
    def live_system(self) -> bool:
        """True when installing onto this very host (root is /)."""
        return self.root.resolve() == Path("/")

    # ---------------------------------------------------------------- install

    def install(self, enable: bool = False) -> list[str]:
        """Install or update the role; returns what was done, one line per step."""
        self.actions = []
        self._venv()
        user = self._service_user() if self.role == "collector" else None
        self._directories(user)
        self._config(user)
        self._units()
        self._systemd(enable)
        return self.actions

    def _venv(self) -> None:
        python = self.venv / "bin" / "python"
        home = _venv_home(self.venv)
        if home is not None and hidden_from_services(home):
            shutil.rmtree(self.venv)
            self.actions.append(f"removed {self.venv}: it was built on {home}, which the services cannot see")
        if not python.exists():
            base = service_python(self.python)
            self.venv.parent.mkdir(parents=True, exist_ok=True)
            self._run("venv", [base, "-m", "venv", str(self.venv)])
            self.actions.append(f"created {self.venv} on {base}")
        # Re-running setup after updating the source tree is how admins upgrade: re-install
        # whenever the tree's code differs from what the venv got last time.
        stamp = self.venv / ".exfilguard-source"
        digest = source_digest(self.source)
        if stamp.exists() and stamp.read_text(encoding="utf-8").strip() == digest:
            self.actions.append(f"unchanged {self.venv} (same source)")
            return
        stamp.unlink(missing_ok=True)
        self._run(
            "pip",
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *self.pip_options, str(self.source)],
            timeout=_PIP_TIMEOUT_SECONDS,
        )
        stamp.write_text(digest + "\n", encoding="utf-8")
        self.actions.append(f"installed exfilguard from {self.source} into {self.venv}")

    def _service_user(self) -> tuple[int, int]:
        conf = self.path("/etc/sysusers.d/exfilguard.conf")
        self._write_ours(conf, SYSUSERS, 0o644)
        passwd = self.path("/etc/passwd")
        if self._lookup_user(passwd) is None:
            if shutil.which("systemd-sysusers"):
                self._run("user", ["systemd-sysusers", f"--root={self.root}", str(conf)])
            elif self.live_system:
                self._run("user", [
                    "useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/var/lib/exfilguard", "--shell", "/usr/sbin/nologin",
                    SERVICE_USER,
                ])
            else:
                raise InstallError("user", "systemd-sysusers is needed to create the user in a staging root")
            self.actions.append(f"created system user {SERVICE_USER}")
        ids = self._lookup_user(passwd)
        if ids is None:
            raise InstallError("user", f"user {SERVICE_USER} is still missing from {passwd}")
        return ids

    def _lookup_user(self, passwd: Path) -> tuple[int, int] | None:
        if self.live_system:
            try:
                entry = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                return None
            return entry.pw_uid, entry.pw_gid
        if not passwd.exists():
            return None
        for line in passwd.read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == SERVICE_USER:
                return int(fields[2]), int(fields[3])
        return None

    def _directories(self, user: tuple[int, int] | None) -> None:
        etc = self.path("/etc/exfilguard")
        if not etc.exists():
            etc.mkdir(mode=0o755, parents=True)
            self.actions.append(f"created {etc}")
        for directory in self._state_dirs():
            target = self.path(directory)
            if not target.exists():
                target.mkdir(mode=0o700 if user is None else 0o750, parents=True)
                self.actions.append(f"created {target}")
            owner = (target.stat().st_uid, target.stat().st_gid)
            if user is not None and os.geteuid() == 0 and owner != user:
                # Only this directory, never its contents: a local agent's state may be inside, and
                # once the top level is the user's, systemd's StateDirectory= will not descend either.
                os.chown(target, *user)
                target.chmod(0o750)
                self.actions.append(f"handed {target} to {SERVICE_USER}")
        if user is not None and os.geteuid() == 0:
            for directory in ("/var/lib/exfilguard", "/var/log/exfilguard"):
                adopted = adopt_state(self.path(directory), user, keep={"agent"})
                if adopted:
                    self.actions.append(
                        f"handed {adopted} entries under {self.path(directory)} (left by a run as root) "
                        f"to {SERVICE_USER}")

    def _config(self, user: tuple[int, int] | None) -> None:
        if self.config_path.exists():
            self.actions.append(f"kept {self.config_path} (the admin's)")
        else:
            text = (self.source / "examples" / "agent.yaml").read_text(encoding="utf-8") \
                if self.role == "agent" else COLLECTOR_CONFIG
            # The agent's may hold an enrollment token: root only. The collector's is read by its user.
            self._write(self.config_path, text, 0o600 if user is None else 0o640)
            if user is not None and os.geteuid() == 0:
                os.chown(self.config_path, 0, user[1])
            self.actions.append(f"wrote default {self.config_path}")
        if self.role == "collector":
            policies = self.path("/etc/exfilguard/policies")
            if policies.exists():
                self.actions.append(f"kept {policies} (the admin's)")
            else:
                shutil.copytree(self.source / "policies", policies)
                self.actions.append(f"installed shipped policies into {policies}")

    def _units(self) -> None:
        text = (self.source / "systemd" / f"exfilguard-{self.role}.service").read_text(encoding="utf-8")
        self._write_ours(self.unit_path(), text.replace(_UNIT_PREFIX, self.prefix.rstrip("/")), 0o644)
        doc = self.source / "docs" / "deploy.md"
        if doc.exists():
            self._write_ours(self.path(f"{self.prefix}/share/doc/deploy.md"), doc.read_text("utf-8"), 0o644)

    def _systemd(self, enable: bool) -> None:
        if not (self.live_system and systemd_running()):
            self.actions.append("systemd is not running here: `systemctl daemon-reload` is left to you")
            return
        self._run("systemctl", ["systemctl", "daemon-reload"])
        if enable:
            self._run("systemctl", ["systemctl", "enable", "--now", f"exfilguard-{self.role}.service"])
            self.actions.append(f"enabled and started exfilguard-{self.role}.service")

    # -------------------------------------------------------------- uninstall

    def uninstall(self, purge: bool = False) -> list[str]:
        """Remove units and (if unused) the venv; with `purge`, the role's config and state too."""
        self.actions = []
        unit = f"exfilguard-{self.role}.service"
        if self.live_system and systemd_running():
            # Best effort: a unit that was never started is not an error worth stopping for.
            subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True, check=False)
        self._remove(self.unit_path())
        other = "collector" if self.role == "agent" else "agent"
        if self.unit_path(other).exists():
            self.actions.append(f"kept {self.venv} (exfilguard-{other} still uses it)")
        else:
            self._remove(self.venv)
            self._remove(self.path(f"{self.prefix}/share"))
            _remove_if_empty(self.path(self.prefix))
        if purge:
            self._remove(self.config_path)
            if self.role == "collector":
                self._remove(self.path("/etc/exfilguard/policies"))
                self._remove(self.path("/etc/sysusers.d/exfilguard.conf"))
            for directory in self._state_dirs():
                self._purge_state(self.path(directory))
            for directory in ("/etc/exfilguard", "/var/lib/exfilguard"):
                _remove_if_empty(self.path(directory))
        else:
            self.actions.append(f"kept {self.config_path.parent} and state (remove them with --purge)")
        if self.live_system and systemd_running():
            self._run("systemctl", ["systemctl", "daemon-reload"])
        return self.actions

    # ---------------------------------------------------------------- helpers

    def _write_ours(self, path: Path, text: str, mode: int) -> None:
        if path.exists() and path.read_text(encoding="utf-8") == text:
            self.actions.append(f"unchanged {path}")
            return
        verb = "updated" if path.exists() else "installed"
        self._write(path, text, mode)
        self.actions.append(f"{verb} {path}")

    @staticmethod
    def _write(path: Path, text: str, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        tmp.replace(path)

    def _purge_state(self, path: Path) -> None:
        if self.role == "collector" and path == self.path("/var/lib/exfilguard"):
            # The collector's files only: a local agent's state lives below this directory.
            for child in list(path.iterdir()) if path.is_dir() else []:
                if child.name != "agent":
                    self._remove(child)
            return
        self._remove(path)

    def _remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            return
        self.actions.append(f"removed {path}")

    @staticmethod
    def _run(step: str, argv: list[str], timeout: float = 120) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(step, f"{argv[0]}: {exc}") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise InstallError(step, f"{' '.join(argv[:4])} failed (exit {done.returncode}):\n{tail}")


def adopt_state(top: Path, user: tuple[int, int], keep: set[str] | frozenset[str] = frozenset()) -> int:
    """Hand what root owns below `top` to `user` (uid, gid); names in `keep` directly below
    `top` are left alone. Returns how many entries changed hands; InstallError names the first
    entry that cannot be adopted.

    The walk holds directory descriptors and never follows a symlink (os.fwalk), so an entry
    swapped for a link meanwhile cannot lead it out of `top`; a symlink's own owner changes.
    """
    if not top.is_dir():
        return 0
    adopted = 0
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        at_top = Path(dirpath) == top
        if at_top:
            dirnames[:] = [d for d in dirnames if d not in keep]
        for name in [*dirnames, *(f for f in filenames if not (at_top and f in keep))]:
            path = Path(dirpath) / name
            info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if info.st_uid == user[0]:
                continue
            if info.st_uid != 0:
                raise InstallError("state", (
                    f"{path} is owned by uid {info.st_uid}, neither root nor {SERVICE_USER}: the "
                    f"collector could not use it; chown it to {SERVICE_USER} or move it away, then "
                    "run setup again"))
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                raise InstallError("state", (
                    f"{path} has {info.st_nlink} hard links: it may be another file's name too, so it "
                    f"is not handed to {SERVICE_USER}; copy it to a file of its own, then run setup again"))
            os.chown(name, *user, dir_fd=dirfd, follow_symlinks=False)
            adopted += 1
    return adopted


def hidden_from_services(path: str | os.PathLike[str]) -> bool:
    """True when the units' ProtectHome= hides `path` (after resolving symlinks)."""
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d + "/") for d in _HIDDEN_FROM_SERVICES)


def service_python(requested: str | None = None) -> str:
    """The interpreter to build the venv on: this one, unless the services could not run it.

    Run from a pyenv or a checkout under /root or /home, the base interpreter lives where
    ProtectHome= hides it; then the system's python3 of the same version (or any >= 3.11)
    is used instead.
    """
    if requested:
        if hidden_from_services(requested):
            raise InstallError("python", f"{requested} is under {', '.join(_HIDDEN_FROM_SERVICES)}, "
                               "which ProtectHome= hides from the services")
        if not _python_ok(requested):
            raise InstallError("python", f"{requested} is not a Python >= 3.11 with the venv module")
        return requested
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = str(Path(sys.base_prefix) / "bin" / f"python{major_minor}")
    if not hidden_from_services(sys.base_prefix) and os.access(base, os.X_OK):
        return base
    for candidate in (f"/usr/bin/python{major_minor}", "/usr/local/bin/python3", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK) and not hidden_from_services(candidate) and _python_ok(candidate):
            return candidate
    raise InstallError(
        "python",
        f"this Python ({sys.base_prefix}) is hidden from the services by ProtectHome=, and no system "
        "python3 >= 3.11 with the venv module was found; install python3-venv or pass --python PATH",
    )


def _python_ok(python: str) -> bool:
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    try:
        done = subprocess.run([python, "-c", check], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _venv_home(venv: Path) -> str | None:
    """The base interpreter's directory recorded in an existing venv's pyvenv.cfg."""
    try:
        lines = (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home":
            return value.strip()
    return None


def systemd_running() -> bool:
    """True when systemd is PID 1 (sd_booted(3)'s test)."""
    return Path("/run/systemd/system").is_dir()


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def source_digest(source: Path) -> str:
    """SHA-256 over the package files of a source tree (what pip would install)."""
    digest = hashlib.sha256()
    files = [source / "pyproject.toml"]
    for package in ("agent", "collector", "protos"):
        files += sorted(p for p in (source / package).rglob("*")
                        if p.is_file() and p.suffix in {".py", ".pyi", ".proto", ".typed"})
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def default_source() -> Path:
    """The source tree this code runs from (an editable install or a checkout)."""
    return Path(__file__).resolve().parents[1]
