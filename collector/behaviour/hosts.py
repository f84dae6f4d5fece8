"""Per-host baselines: which removable devices each workstation has seen, and since when.

A host is warm after WARM_DAYS active days (days with events naming a user or a device); from
then on a serial never seen on it before today is new for the host, whoever plugs it in. IT
admins' sticks appear on dozens of hosts: the field is context, not a policy on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from collector.behaviour.baselines import MAX_DEVICES_PER_USER, WARM_DAYS, parse_snapshots, snapshot_of


@dataclass
class HostBaseline:
    """Active days and the removable devices seen on one host (serial -> first local day)."""

    active_days: int = 0
    last_day: int = -1
    devices: dict[str, int] = field(default_factory=dict)
    user: str = ""  # the latest user an event on this host named

    def to_json(self) -> dict[str, Any]:
        """JSON-ready snapshot: the fields in this order."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostBaseline:
        """The inverse of to_json; KeyError/TypeError/ValueError when malformed."""
        devices = {str(k): int(v) for k, v in dict(data["devices"]).items()}
        return cls(int(data["active_days"]), int(data["last_day"]), devices, str(data.get("user", "")))


class HostBaselines:
    """Every host's baseline; `dirty` names the hosts changed since the last snapshot."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostBaseline] = {}
        self.dirty: set[str] = set()

    def observe(self, host: str, day: int, serial: str, user: str) -> bool:
        """Count one event on `host`; True when `serial` is new for a warm host today."""
        base = self.hosts.get(host)
        if base is None:
            base = self.hosts[host] = HostBaseline()
        if user and user != base.user:
            base.user = user
            self.dirty.add(host)
        if day > base.last_day:
            base.active_days += 1
            base.last_day = day
            self.dirty.add(host)
        if not serial:
            return False
        first = base.devices.get(serial)
        if first is None:
            if len(base.devices) >= MAX_DEVICES_PER_USER:
                base.devices.pop(next(iter(base.devices)))
            base.devices[serial] = first = day
            self.dirty.add(host)
        return first == day and base.active_days > WARM_DAYS

    def user_on(self, host: str) -> str:
        """The latest user seen on the host ("" if none): who presumably plugged a device in."""
        base = self.hosts.get(host)
        return base.user if base is not None else ""

    def snapshot(self, hosts: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """JSON-ready baselines of the given hosts (default: all)."""
        return snapshot_of(self.hosts, hosts)

    def restore(self, snapshots: dict[str, dict[str, Any]]) -> int:
        """Load snapshots; malformed ones are skipped. How many were loaded."""
        loaded = parse_snapshots(snapshots, HostBaseline.from_json)
        self.hosts.update(loaded)
        return len(loaded)
