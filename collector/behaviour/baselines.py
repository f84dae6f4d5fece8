"""Per-user and peer-group baselines of removable-media use, kept small enough for 10,000s of users.

A user's baseline is built from every event that names them (any action counts as activity):
the days they were active, the local hours they are usually active at (an hour is usual once it
lay within the user's working span, first to last event of a day, on USUAL_HOUR_DAYS days), the
days and devices of their removable use, and the volume they wrote to removable media on each day they wrote.
Days and hours are local to the collector's timezone. Nothing is "new" or "unusual" before a
user is warm: WARM_DAYS distinct active days of history, so a user with two days of history is
never flagged as a first-time removable user.

Volume ratios compare today's removable writes (so far, including this event) with the mean of
the user's own write-days in the last HISTORY_DAYS days (at least MIN_WRITE_DAYS of them), and
with the mean write-day of the user's peer group over the same span.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

WARM_DAYS = 10  # active days before anything about a user counts as new or unusual
HISTORY_DAYS = 30  # rolling span of the volume baselines
MIN_WRITE_DAYS = 3  # write-days needed before a user's own volume ratio means anything
USUAL_HOUR_DAYS = 2  # an hour is usual once the user was active in it on this many days
MAX_DEVICES_PER_USER = 256  # serials remembered per user (oldest forgotten first)
MAX_WRITE_DAYS = 64  # write-days remembered per user
MAX_PEER_DAYS = 50_000  # write-days remembered per peer group

# Actions that mean removable media was used, and the one that carries a written file's size.
REMOVABLE_ACTIONS = frozenset({"device.attach", "device.mount", "file.write", "file.copy", "device.write"})
WRITE_ACTION = "file.write"


@dataclass
class WriteDay:
    """One local day on which a user wrote to removable media."""

    day: int
    files: int
    bytes: int


class _Snapshotted(Protocol):
    def to_json(self) -> dict[str, Any]: ...


_T = TypeVar("_T")


def snapshot_of(table: Mapping[str, _Snapshotted], names: set[str] | None) -> dict[str, dict[str, Any]]:
    """JSON-ready snapshots of the `names` entries of `table` (default: all) — users' or hosts'."""
    keys = table.keys() if names is None else names & table.keys()
    return {name: table[name].to_json() for name in keys}


def parse_snapshots(snapshots: Mapping[str, Any], from_json: Callable[[Any], _T]) -> dict[str, _T]:
    """The snapshots that parse with `from_json`; a malformed one (an older or damaged store) is skipped."""
    out: dict[str, _T] = {}
    for name, data in snapshots.items():
        try:
            out[name] = from_json(data)
        except (KeyError, TypeError, ValueError):
            continue
    return out


@dataclass
class UserBaseline:
    """What is known about one user; `today_*` hold the current local day's removable writes."""

    first_day: int = -1
    last_day: int = -1
    active_days: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)  # past days whose span held the hour
    span: tuple[int, int] = (-1, -1)  # first and last local hour active on the current day
    removable_days: int = 0  # days with removable use before the current day
    first_removable_day: int = -1
    last_removable_day: int = -1
    devices: dict[str, int] = field(default_factory=dict)  # serial -> first local day used
    writes: deque[WriteDay] = field(default_factory=lambda: deque(maxlen=MAX_WRITE_DAYS))
    today: int = -1
    today_files: int = 0
    today_bytes: int = 0
    today_tagged: int = 0
    _means: tuple[int, float, float] = field(default=(-1, 0.0, 0.0), repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready snapshot (the store keeps one per user)."""
        return {
            "first_day": self.first_day,
            "last_day": self.last_day,
            "active_days": self.active_days,
            "hours": self.hours,
            "span": list(self.span),
            "removable_days": self.removable_days,
            "first_removable_day": self.first_removable_day,
            "last_removable_day": self.last_removable_day,
            "devices": self.devices,
            "writes": [[w.day, w.files, w.bytes] for w in self.writes],
            "today": [self.today, self.today_files, self.today_bytes, self.today_tagged],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserBaseline:
        """The inverse of to_json; raises KeyError/TypeError/ValueError on a malformed snapshot."""
        hours = [int(h) for h in data["hours"]]
        if len(hours) != 24:
            raise ValueError("hours must hold 24 counts")
        today = [int(v) for v in data["today"]]
        return cls(
            first_day=int(data["first_day"]),
            last_day=int(data["last_day"]),
            active_days=int(data["active_days"]),
            hours=hours,
            span=(int(data["span"][0]), int(data["span"][1])),
            removable_days=int(data["removable_days"]),
            first_removable_day=int(data["first_removable_day"]),
            last_removable_day=int(data["last_removable_day"]),
            devices={str(k): int(v) for k, v in dict(data["devices"]).items()},
            writes=deque(
                (WriteDay(int(d), int(f), int(b)) for d, f, b in data["writes"]), maxlen=MAX_WRITE_DAYS
            ),
            today=today[0],
            today_files=today[1],
            today_bytes=today[2],
            today_tagged=today[3],
        )

    def means(self, day: int) -> tuple[float, float]:
        """Mean bytes and files of the user's write-days in the span before `day`; (0, 0) with
        fewer than MIN_WRITE_DAYS of them. Computed once a day (history changes only at a roll)."""
        if self._means[0] != day:
            history = [w for w in self.writes if w.day >= day - HISTORY_DAYS]
            if len(history) < MIN_WRITE_DAYS:
                self._means = (day, 0.0, 0.0)
            else:
                n = len(history)
                self._means = (day, sum(w.bytes for w in history) / n, sum(w.files for w in history) / n)
        return self._means[1], self._means[2]

    @property
    def warm(self) -> bool:
        """Enough history for "new" and "unusual" to mean something."""
        return self.active_days >= WARM_DAYS


@dataclass
class PeerGroup:
    """Write-days of a group's members in the rolling span, with running sums (no rescans)."""

    days: deque[WriteDay] = field(default_factory=deque)
    files: int = 0
    bytes: int = 0

    def add(self, day: WriteDay) -> None:
        """Count one member's finished write-day."""
        self.days.append(day)
        self.files += day.files
        self.bytes += day.bytes
        if len(self.days) > MAX_PEER_DAYS:
            self._drop()

    def expire(self, today: int) -> None:
        """Forget write-days older than the span (they arrive roughly in day order)."""
        while self.days and self.days[0].day < today - HISTORY_DAYS:
            self._drop()

    def _drop(self) -> None:
        old = self.days.popleft()
        self.files -= old.files
        self.bytes -= old.bytes

    def mean_bytes(self) -> float:
        """Mean bytes of a member's write-day (0 when none)."""
        return self.bytes / len(self.days) if self.days else 0.0


@dataclass(slots=True)  # not frozen: built once per event, and frozen __init__ is slow
class Observation:
    """What one event tells about its user, for the enriched fields and the risk signals."""

    user: UserBaseline
    removable: bool
    first_device_use: bool
    unusual_hour: bool
    volume_ratio: float
    files_ratio: float
    peer_ratio: float


class Baselines:
    """Every user's baseline and every peer group's; `observe` updates them with one event."""

    def __init__(self, groups: dict[str, str] | None = None) -> None:
        self.users: dict[str, UserBaseline] = {}
        self.groups = dict(groups or {})  # user -> peer group name; others are in "all"
        self.peers: dict[str, PeerGroup] = {}
        self.dirty: set[str] = set()  # users changed since the last snapshot was taken
        # user -> what an event other than a removable one tells (always the same): most events
        self._plain: dict[str, Observation] = {}

    def group_of(self, user: str) -> str:
        """The user's peer group ("all" when not listed)."""
        return self.groups.get(user, "all")

    def observe(
        self, user: str, day: int, hour: int, *, action: str, serial: str, size: int, tagged: bool
    ) -> Observation:
        """Update the user's baseline with one event at local `day`/`hour`; what it says about them."""
        base = self.users.get(user)
        if base is None:
            base = self.users[user] = UserBaseline(first_day=day)
        self.dirty.add(user)
        if day > base.today:
            self._roll(user, base, day)
        # Past days are the history an event is judged against; today only widens today's span.
        usual = base.hours[hour] >= USUAL_HOUR_DAYS
        if day > base.last_day:
            base.active_days += 1
            base.last_day = day
        first, last = base.span
        if first < 0:
            base.span = (hour, hour)
        elif hour < first or hour > last:
            base.span = (min(first, hour), max(last, hour))
        removable = bool(serial) and action in REMOVABLE_ACTIONS
        first_device = False
        if removable:
            if base.first_removable_day < 0:
                base.first_removable_day = day
            base.last_removable_day = day
            if serial not in base.devices:
                first_device = True
                if len(base.devices) >= MAX_DEVICES_PER_USER:
                    base.devices.pop(next(iter(base.devices)))
                base.devices[serial] = day
            else:
                first_device = base.devices[serial] == day
            if action == WRITE_ACTION:
                base.today_files += 1
                base.today_bytes += max(size, 0)
                if tagged:
                    base.today_tagged += max(size, 0)
        if not removable:  # nothing of it is about removable use: the user's one plain observation
            plain = self._plain.get(user)
            if plain is None or plain.user is not base:
                plain = self._plain[user] = Observation(base, False, False, False, 0.0, 0.0, 0.0)
            return plain
        volume = files = peer = 0.0
        if base.today_files:
            mean_bytes, mean_files = base.means(day)
            if mean_bytes or mean_files:
                volume = base.today_bytes / mean_bytes if mean_bytes > 0 else 0.0
                files = base.today_files / mean_files if mean_files > 0 else 0.0
            group = self.peers.get(self.group_of(user))
            if group is not None and len(group.days) >= MIN_WRITE_DAYS:
                group.expire(day)
                mean = group.mean_bytes()
                peer = base.today_bytes / mean if mean > 0 else 0.0
            # rounded here only: three round() calls cost most events (no removable write) ~1 us
            volume, files, peer = round(volume, 2), round(files, 2), round(peer, 2)
        return Observation(
            user=base,
            removable=removable,
            first_device_use=first_device and base.warm,
            unusual_hour=removable and base.warm and not usual,
            volume_ratio=volume,
            files_ratio=files,
            peer_ratio=peer,
        )

    def _roll(self, user: str, base: UserBaseline, day: int) -> None:
        """A new local day for the user: yesterday's writes join the history."""
        first, last = base.span
        if first >= 0:
            for hour in range(first, last + 1):
                base.hours[hour] += 1
        base.span = (-1, -1)
        if base.today >= 0 and base.last_removable_day == base.today:
            base.removable_days += 1
        if base.today >= 0 and base.today_files:
            done = WriteDay(base.today, base.today_files, base.today_bytes)
            base.writes.append(done)
            group = self.peers.setdefault(self.group_of(user), PeerGroup())
            group.add(done)
            group.expire(day)
        base.today, base.today_files, base.today_bytes, base.today_tagged = day, 0, 0, 0

    def snapshot(self, users: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """JSON-ready baselines of the given users (default: all)."""
        return snapshot_of(self.users, users)

    def restore(self, snapshots: dict[str, dict[str, Any]]) -> int:
        """Load snapshots (from the store); malformed ones are skipped. How many were loaded."""
        loaded = parse_snapshots(snapshots, UserBaseline.from_json)
        for name, base in loaded.items():
            self.users[name] = base
            group = self.peers.setdefault(self.group_of(name), PeerGroup())
            for write in base.writes:
                group.add(write)
        for group in self.peers.values():
            ordered = sorted(group.days, key=lambda w: w.day)
            group.days = deque(ordered)
        return len(loaded)
