"""agent.yaml: what an admin may set on a workstation, validated with file:line:key errors.

Relative paths are taken relative to the config file, so a config directory can be
moved as a whole (the quickstart and tests rely on this).
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import pydantic
from pydantic import Field

from common import yamlfile

DEFAULT_PATH = "/etc/exfilguard/agent.yaml"


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class AgentTls(_Strict):
    """How the agent reaches the collector: mTLS, or plaintext on loopback when asked for."""

    insecure_loopback: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    enrollment_token: str | None = None
    # The collector's enrollment port (host:port); unset: the collector's host, port 50052.
    enroll_address: str | None = None

    @pydantic.model_validator(mode="after")
    def _one_mode(self) -> Self:
        if not self.insecure_loopback and not self.ca:
            raise ValueError("set either insecure_loopback: true or ca (with cert/key or enrollment_token)")
        if bool(self.cert) != bool(self.key):
            raise ValueError("set both cert and key, or neither (to use the enrolled ones in state_dir)")
        return self


EgressKind = Literal["network", "mtp"]

# Mounts that carry data off the machine without a block device of their own: network file
# systems and phones (MTP) mounted through FUSE, by file-system type as mountinfo names it.
EGRESS_FILE_SYSTEMS: dict[str, EgressKind] = {
    "nfs": "network", "nfs4": "network", "cifs": "network", "smb3": "network",
    "fuse.sshfs": "network", "fuse.rclone": "network", "fuse.davfs": "network", "davfs": "network",
    "fuse.jmtpfs": "mtp", "fuse.simple-mtpfs": "mtp", "fuse.go-mtpfs": "mtp", "fuse.mtpfs": "mtp",
    "fuse.aft-mtp-mount": "mtp",
}
# The same opened by a desktop's file manager: GVfs shows each as a directory of its one FUSE
# mount (fuse.gvfsd-fuse at /run/user/UID/gvfs), not as a mount of its own.
EGRESS_PATHS: dict[str, EgressKind] = {
    "/run/user/*/gvfs/mtp:*": "mtp", "/run/user/*/gvfs/gphoto2:*": "mtp",
    "/run/user/*/gvfs/smb-share:*": "network", "/run/user/*/gvfs/sftp:*": "network",
    "/run/user/*/gvfs/nfs:*": "network", "/run/user/*/gvfs/dav:*": "network",
    "/run/user/*/gvfs/davs:*": "network", "/run/user/*/gvfs/ftp:*": "network",
    "/run/user/*/gvfs/afp-volume:*": "network", "/run/user/*/gvfs/google-drive:*": "network",
}

# Where sites mount their own network storage (home directories, software, data): not egress.
NOT_EGRESS_POINTS = ["/", "/home", "/home/*", "/srv", "/opt", "/usr", "/usr/*", "/var", "/var/*"]


class Removable(_Strict):
    """What counts as removable media: block devices beyond USB and sysfs `removable`, and
    mounts of other egress media (network shares, phones) by file-system type or path."""

    include_loop: bool = False
    serials: list[str] = []   # extra devices, by serial
    devices: list[str] = []   # extra devices, by kernel name (sdb, mmcblk0)
    # file-system type -> kind; a value given replaces the default map ({} turns it off)
    file_systems: dict[str, EgressKind] = dict(EGRESS_FILE_SYSTEMS)
    # absolute glob of directories (not mounts of their own) -> kind; replaces the default map
    paths: dict[str, EgressKind] = dict(EGRESS_PATHS)
    # mount points (globs, `*` within one path component) of egress types that are the site's
    # own storage, not a way out: NFS homes, shared software; replaces the default list
    not_egress_points: list[str] = list(NOT_EGRESS_POINTS)

    @pydantic.field_validator("paths", "not_egress_points")
    @classmethod
    def _absolute(cls, value: dict[str, EgressKind] | list[str]) -> dict[str, EgressKind] | list[str]:
        for pattern in value:
            if not pattern.startswith("/"):
                raise ValueError(f"{pattern!r} is not an absolute path glob")
        return value


class SensorSettings(_Strict):
    """How the sensors watch (issue 3). Defaults suit a workstation; tests and demos tune them."""

    # auto: use fanotify for exact attribution when root and the kernel allows it;
    # on: fail to start without it; off: inotify + psutil best effort only.
    fanotify: Literal["auto", "on", "off"] = "auto"
    mount_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0   # fallback; mountinfo is also polled
    mass_read_files: Annotated[int, Field(ge=2, le=1_000_000)] = 50  # tagged files one process reads...
    mass_read_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0  # ...within this window
    archive_min_files: Annotated[int, Field(ge=1, le=1_000_000)] = 2  # tagged reads before an archive counts
    inventory_seconds: Annotated[float, Field(ge=1, le=86_400)] = 300.0  # re-count tags at least this often
    max_hash_bytes: Annotated[int, Field(ge=0, le=1 << 40)] = 4 << 30  # full SHA-256 only below this size
    # chunk fingerprints of tagged files kept in memory (~16 bytes each; ~10 KiB of data each)
    max_chunk_fingerprints: Annotated[int, Field(ge=0, le=50_000_000)] = 2_000_000
    # tagged files given an inode mark of their own (reads by another name: a hard link, a bind
    # mount); each holds its inode in kernel memory (~1.2 KiB). Past it, only files that have
    # another name already are marked, and an agent.gap (file_marks_full) says how many were not
    max_file_marks: Annotated[int, Field(ge=0, le=50_000_000)] = 1_000_000

    @pydantic.field_validator("fanotify", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean: take it as the admin wrote it.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


def allowed_device_entry(entry: str) -> tuple[str, str, str]:
    """(vendor_id, product_id, serial) of one `prevent.allowed_devices` entry, "" where unset.

    `SERIAL`, `VVVV:PPPP` (any device of that model) or `VVVV:PPPP:SERIAL` (ids in hex).
    Raises ValueError naming the entry when it fits none of them.
    """
    if not entry or len(entry) > 256 or not entry.isprintable() or entry != entry.strip():
        raise ValueError(f"allowed device {entry[:64]!r}: 1 to 256 printable characters, no outer spaces")
    parts = entry.split(":", 2)
    if len(parts) >= 2 and _HEX4.fullmatch(parts[0]) and _HEX4.fullmatch(parts[1]):
        serial = parts[2] if len(parts) == 3 else ""
        if len(parts) == 3 and not serial:
            raise ValueError(f"allowed device {entry!r}: empty serial after vendor:product:")
        return parts[0].lower(), parts[1].lower(), serial
    if ":" in entry:
        raise ValueError(f"allowed device {entry!r}: expected SERIAL, VVVV:PPPP or VVVV:PPPP:SERIAL (hex)")
    return "", "", entry


class PreventException(_Strict):
    """A time-boxed exception to prevent.removable_writes: `user` may copy tagged data to
    removable media (only to the device with serial `device`, when set) until `until`.

    Granted by an officer at the collector (`exfilguard exception grant`), which records it as
    `id`, for `host`, by `granted_by`, and signs it (common/grants.py); the agent honours only
    entries whose `signature` verifies."""

    id: Annotated[str, Field(max_length=64)] = ""
    host: Annotated[str, Field(max_length=256)] = ""
    user: Annotated[str, Field(min_length=1, max_length=64)]
    device: Annotated[str, Field(max_length=256)] = ""
    until: datetime.datetime
    note: Annotated[str, Field(max_length=1024)] = ""
    granted_by: Annotated[str, Field(max_length=64)] = ""
    signature: Annotated[str, Field(max_length=256)] = ""

    @pydantic.field_validator("until")
    @classmethod
    def _aware(cls, value: datetime.datetime) -> datetime.datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone (2026-12-02T12:00:00Z)")
        return value


class PreventSettings(_Strict):
    """Prevention (issue 12): what the agent refuses rather than only reports.

    `removable_writes: block` denies a process carrying tagged data opening files for
    writing on removable media; `devices` sets removable storage not on `allowed_devices`
    read-only at the block layer, or refuses it. `fail` is what an open gets when the
    agent cannot decide within `decision_timeout_ms`.
    """

    removable_writes: Literal["monitor", "block"] = "monitor"
    devices: Literal["monitor", "read-only", "block"] = "monitor"
    allowed_devices: Annotated[list[str], Field(max_length=10_000)] = []
    fail: Literal["open", "closed"] = "open"
    allowed_users: Annotated[list[str], Field(max_length=10_000)] = []   # never blocked (imaging staff)
    allowed_groups: Annotated[list[str], Field(max_length=10_000)] = []  # members never blocked
    decision_timeout_ms: Annotated[int, Field(ge=10, le=10_000)] = 500
    exceptions: Annotated[list[PreventException], Field(max_length=10_000)] = []
    # the collector's grant-signing key (raw Ed25519, base64), pushed with the grants it signed
    grant_key: Annotated[str, Field(max_length=64)] = ""

    @pydantic.field_validator("allowed_devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        for entry in value:
            allowed_device_entry(entry)
        return value

    @pydantic.field_validator("allowed_users", "allowed_groups")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or len(name) > 64 or not name.isprintable() or " " in name:
                raise ValueError(f"user or group {name[:64]!r}: 1 to 64 printable characters, no spaces")
        return value


class SpoolSettings(_Strict):
    """The on-disk spool: bounded, so a long outage ends in an agent.gap, not a full disk."""

    max_events: Annotated[int, Field(ge=100, le=100_000_000)] = 1_000_000
    max_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = 512 << 20


class BatchSettings(_Strict):
    """Batches go up when either bound is reached."""

    max_events: Annotated[int, Field(ge=1, le=10_000)] = 500
    max_delay_ms: Annotated[int, Field(ge=1, le=60_000)] = 200


MAX_COLLECTORS = 16


class AgentConfig(_Strict):
    """The whole agent.yaml."""

    # One host:port, or a list: failover in order, and back to an earlier one once it serves again.
    collector: str | list[str] = "127.0.0.1:50051"
    tls: AgentTls = AgentTls(insecure_loopback=True)
    state_dir: str = "/var/lib/exfilguard/agent"
    tags: dict[str, list[str]] = {}
    removable: Removable = Removable()
    spool: SpoolSettings = SpoolSettings()
    batch: BatchSettings = BatchSettings()
    sensors: SensorSettings = SensorSettings()
    prevent: PreventSettings = PreventSettings()
    heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    reconnect_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # With several collectors: how often (jittered) an agent on a later one checks an earlier one.
    failback_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    max_message_bytes: Annotated[int, Field(ge=64 << 10, le=64 << 20)] = 4 << 20
    log_level: str = "info"

    @pydantic.field_validator("collector")
    @classmethod
    def _host_port(cls, value: str | list[str]) -> str | list[str]:
        addresses = [value] if isinstance(value, str) else value
        if not addresses:
            raise ValueError("expected host:port or a list of them, got an empty list")
        if len(addresses) > MAX_COLLECTORS:
            raise ValueError(f"at most {MAX_COLLECTORS} collector addresses")
        for address in addresses:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port, got {address!r}")
        if len(set(addresses)) != len(addresses):
            raise ValueError("a collector address is listed twice")
        return value

    @property
    def collectors(self) -> tuple[str, ...]:
        """The collector addresses in the order they are tried (one when `collector` is a string)."""
        return (self.collector,) if isinstance(self.collector, str) else tuple(self.collector)

    @pydantic.field_validator("tags")
    @classmethod
    def _tag_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for path, tags in value.items():
            if not path.startswith("/"):
                raise ValueError(f"tagged path {path!r} must be absolute")
            if not tags:
                raise ValueError(f"tagged path {path!r} has no tags")
        return value

    @pydantic.field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("expected debug, info, warning or error")
        return value.lower()


# ------------------------------------------------------------ central config (issue 6)

# What the collector may push. Everything else (collector, tls, state_dir, spool, limits)
# stays local: a push must never cut an agent off its collector or resize its disk use.
PUSHABLE_KEYS = ("tags", "removable", "sensors", "prevent", "heartbeat_seconds", "batch", "log_level")
MAX_PUSHED_PATHS = 10_000
MAX_TAG_CHARS = 128


class PushedSettings(_Strict):
    """The part of agent.yaml the collector may push; each key optional, types are AgentConfig's.

    In `tags` a path mapped to `[]` removes that path (from the local map, or from a
    broader level of the fleet file): the only way to take a local tag away centrally.
    Nested settings (sensors, removable, prevent, batch) merge key by key over the local ones.
    """

    tags: dict[str, list[str]] | None = None
    removable: Removable | None = None
    sensors: SensorSettings | None = None
    prevent: PreventSettings | None = None
    heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    batch: BatchSettings | None = None
    log_level: Literal["debug", "info", "warning", "error"] | None = None

    @pydantic.field_validator("tags")
    @classmethod
    def _tag_map(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return value
        if len(value) > MAX_PUSHED_PATHS:
            raise ValueError(f"more than {MAX_PUSHED_PATHS} tagged paths")
        for path, tags in value.items():
            if not path.startswith("/"):
                raise ValueError(f"tagged path {path!r} must be absolute")
            for tag in tags:
                if not tag or len(tag) > MAX_TAG_CHARS or not tag.isprintable():
                    raise ValueError(
                        f"tag {tag[:MAX_TAG_CHARS]!r} of {path!r}: 1 to {MAX_TAG_CHARS} printable characters"
                    )
        return value


def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key (tags path by path), anything else is replaced.

    A None (`key:` left empty in YAML) in `top` means "not set here" and changes nothing.
    """
    out = dict(base)
    for key, value in top.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = value
    return out


def apply_pushed(local: AgentConfig, pushed: dict[str, Any]) -> AgentConfig:
    """The config an agent runs: `pushed` (already PushedSettings-valid) merged over `local`.

    Local config is the fallback; pushed keys win. Raises pydantic.ValidationError when the
    result does not fit AgentConfig.
    """
    merged = overlay(local.model_dump(mode="python"), pushed)
    merged["tags"] = {path: tags for path, tags in merged.get("tags", {}).items() if tags}
    return AgentConfig.model_validate(merged)


def load(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate agent.yaml; raises yamlfile.YamlError naming file, line and key."""
    doc = yamlfile.load(path)
    config = yamlfile.validate(doc, AgentConfig)
    base = Path(path).resolve().parent
    tls_files = {k: str(base / v) for k in ("ca", "cert", "key") if (v := getattr(config.tls, k))}
    return config.model_copy(
        update={"state_dir": str(base / config.state_dir), "tls": config.tls.model_copy(update=tls_files)}
    )
