"""Who this agent is: a UUID made once and kept under the state directory, plus host facts.

The collector keys everything on (agent id, sequence), so the id must survive restarts,
upgrades and crashes; it is written atomically (temp file, fsync, rename) with mode 0600.

Errors:
    IdentityError        the id file cannot be read or written, or holds no valid UUID
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.errors import PathError

ID_FILE = "agent-id"
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_MAX_ID_FILE_BYTES = 256  # a UUID and a newline; anything bigger is not ours


class IdentityError(PathError):
    """The agent id file is unusable; carries the path."""


@dataclass(frozen=True)
class Identity:
    """The agent id and the host it runs on."""

    agent_id: str
    hostname: str
    machine_id: str


def load_or_create(state_dir: str | os.PathLike[str]) -> Identity:
    """Read the persisted agent id under `state_dir`, creating it (and the directory) on first run."""
    directory = Path(state_dir)
    path = directory / ID_FILE
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        agent_id = _read_id(path)
        if agent_id is None:
            agent_id = str(uuid.uuid4())
            write_atomic(path, (agent_id + "\n").encode())
    except OSError as exc:
        raise IdentityError(str(path), exc.strerror or str(exc)) from exc
    return Identity(agent_id=agent_id, hostname=socket.gethostname(), machine_id=machine_id())


def _read_id(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_ID_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    # A corrupt id must stop the agent: silently minting a new one would split its history.
    if len(raw) > _MAX_ID_FILE_BYTES:
        raise IdentityError(str(path), "agent id file is too large")
    text = raw.decode("ascii", errors="replace").strip()
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise IdentityError(str(path), f"agent id file does not hold a UUID: {text[:40]!r}") from exc


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def machine_id() -> str:
    """The systemd machine id, or "" when the host has none (containers)."""
    for name in MACHINE_ID_FILES:
        try:
            with Path(name).open(encoding="ascii", errors="replace") as handle:
                text = handle.read(64).strip()
        except OSError:
            continue
        if text:
            return text
    return ""
