"""Every removable device the fleet has seen: what `exfilguard devices` lists and `learn` reads.

One record per serial: vendor and product ids, vendor and model, first and last seen, who used it
on which hosts (with when each last did), bytes and files written to it, alerts it was part of.
Kept in memory by the collector and written to the store in batches (the dirty set).
"""

from __future__ import annotations

from typing import Any

from collector.store.devices import Sighting

__all__ = ["Sighting", "Sightings"]

MAX_NAMES = 200  # users and hosts remembered per device (the least recent dropped)
MAX_DEVICES = 200_000


def _touch(names: dict[str, str], name: str, when: str) -> None:
    if name in names:
        names[name] = max(names[name], when)
        return
    if len(names) >= MAX_NAMES:
        names.pop(min(names, key=names.__getitem__))
    names[name] = when


class Sightings:
    """Every device seen, by serial; `dirty` holds the serials changed since the last save."""

    def __init__(self) -> None:
        self.devices: dict[str, Sighting] = {}
        self.dirty: set[str] = set()

    def see(self, event: dict[str, Any] | Any, serial: str, when: str, size: int, write: bool) -> None:
        """Record one removable-media event (attach, mount, write ...) on `serial`."""
        seen = self.devices.get(serial)
        if seen is None:
            if len(self.devices) >= MAX_DEVICES:
                self.devices.pop(next(iter(self.devices)))
            seen = self.devices[serial] = Sighting(serial, first_seen=when, last_seen=when)
        for name in ("vendor_id", "product_id", "vendor", "model"):
            value = event.get(f"device.{name}")
            if value and not getattr(seen, name):
                setattr(seen, name, str(value))
        if when and (not seen.first_seen or when < seen.first_seen):
            seen.first_seen = when
        seen.last_seen = max(seen.last_seen, when)
        user = event.get("user.name")
        if user:
            _touch(seen.users, str(user), when)
        host = event.get("host.name")
        if host:
            _touch(seen.hosts, str(host), when)
        if write:
            seen.files_written += 1
            seen.bytes_written += max(size, 0)
        self.dirty.add(serial)

    def alerted(self, serial: str) -> None:
        """One more alert names this device."""
        seen = self.devices.get(serial)
        if seen is not None:
            seen.alerts += 1
            self.dirty.add(serial)

    def take_dirty(self) -> list[Sighting]:
        """The records changed since the last call (to write to the store)."""
        out = [self.devices[s] for s in self.dirty if s in self.devices]
        self.dirty = set()
        return out
