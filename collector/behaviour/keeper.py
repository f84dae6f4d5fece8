"""BehaviourKeeper: keeps a running Behaviour and the store in step (the collector's side).

At start it loads approvals, baselines and risk scores from the store. Then, from the policy
listener's tick: approvals are re-read when the store's approval history grew (an admin ran
`exfilguard devices approve` in another process), and changed baselines and device sightings are
written back every SAVE_SECONDS and at shutdown. Snapshots are taken on the caller's thread (the
event loop, which alone changes the Behaviour); the store work runs wherever the caller puts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from collector.behaviour.enrich import Behaviour
from collector.store.base import Store, StoreError
from collector.store.baselines import BaselineBook
from collector.store.devices import DeviceBook, Sighting

log = logging.getLogger("exfilguard.collector.behaviour")

# Changed baselines and sightings reach the store this often (and at shutdown). Every active user
# changes all day, so a short period would rewrite the whole fleet's rows each time; a crash
# loses at most this much of statistics that span weeks.
SAVE_SECONDS = 300.0
APPROVALS_SECONDS = 2.0  # how often the store is asked whether approvals changed


def peer_groups(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """collector.yaml's `peer_groups` (group -> users) as user -> group (the first group wins)."""
    out: dict[str, str] = {}
    for group, users in groups.items():
        for user in users:
            out.setdefault(user, group)
    return out


class BehaviourKeeper:
    """Loads a Behaviour from the store and writes its changes back."""

    def __init__(self, behaviour: Behaviour, store: Store) -> None:
        self.behaviour = behaviour
        self.devices = DeviceBook(store.domain())
        self.outage = store.outage
        self.baselines = BaselineBook(store.domain())
        self._version: tuple[int, str] | None = None
        self._saved_at = time.monotonic()
        self._checked_at = 0.0

    def load(self) -> None:
        """Approvals, baselines and risk scores as stored (a store error is logged: start blank)."""
        try:
            self.refresh_approvals()
            users = self.behaviour.restore(self.baselines.load())
            for seen in self.devices.sightings():
                self.behaviour.sightings.devices[seen.serial] = seen
        except StoreError:
            log.exception("could not load device approvals and baselines; starting without them")
            return
        log.info(
            "baselines of %d users and %d device approvals loaded",
            users,
            len(self.devices.approvals()),
            extra={"users": users},
        )

    def refresh_approvals(self) -> bool:
        """Re-read approvals if the store's history changed since the last look; True if it did."""
        version = self.devices.version()
        if version == self._version:
            return False
        self.behaviour.approvals.replace(self.devices.approvals())
        self._version = version
        return True

    def due(self, now: float | None = None, *, final: bool = False) -> Callable[[], None] | None:
        """The store work due now, to run off the event loop (None when nothing is due).

        Called on the thread that feeds the Behaviour: it takes the snapshots here."""
        moment = time.monotonic() if now is None else now
        save = final or moment - self._saved_at >= SAVE_SECONDS
        check = moment - self._checked_at >= APPROVALS_SECONDS
        if not save and not check:
            return None
        snapshots: dict[str, dict[str, object]] = {}
        sightings: list[Sighting] = []
        if save:
            self._saved_at = moment
            dirty, self.behaviour.baselines.dirty = self.behaviour.baselines.dirty, set()
            hosts, self.behaviour.hosts.dirty = self.behaviour.hosts.dirty, set()
            snapshots = dict(self.behaviour.snapshot(dirty, hosts))
            sightings = [Sighting.from_dict(s.as_dict()) for s in self.behaviour.sightings.take_dirty()]
        if check:
            self._checked_at = moment

        def work() -> None:
            try:
                if check:
                    self.refresh_approvals()
                if snapshots:
                    self.baselines.save(snapshots)
                if sightings:
                    self.devices.save_sightings(sightings)
            except StoreError as exc:
                self.outage.failed(exc, "syncing device approvals and baselines")
            else:
                self.outage.succeeded()

        return work
