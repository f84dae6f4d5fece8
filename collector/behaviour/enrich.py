"""Behaviour: adds approval, baseline and risk fields to each event before policies see it.

    behaviour = Behaviour(timezone="Europe/Berlin", groups={"alice": "finance"})
    engine = PolicyEngine(policy_set, timezone=..., behaviour=behaviour)

The engine calls `enrich(event, now)` on every event (warming included, so a replay rebuilds
baselines) and `alerted(alert_fields, now)` on every alert it raises (the risk score counts
alerts). Cheap on the hot path: an event without a user costs a dict lookup; the timezone offset
is computed once per UTC hour, not per event; a user's nonzero risk score (its decay, its signals)
only for events that meet a policy reading it, or when an alert is built from the event. The
fields are listed in collector/policy/fields.py (ENRICHED) and documented in docs/policies.md.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping, MutableMapping
from typing import Any

from collector.behaviour.approvals import ApprovalView
from collector.behaviour.baselines import Baselines, Observation
from collector.behaviour.hosts import HostBaselines
from collector.behaviour.risk import ALERT_POINTS, SIGNAL_POINTS, RiskBook
from collector.behaviour.sightings import Sightings
from protos.events import EventView

VOLUME_SPIKE_RATIO = 4.0  # today's bytes vs the user's own mean write-day: a risk signal
PEER_SPIKE_RATIO = 5.0  # today's bytes vs the peer group's mean write-day
SPIKE_MIN_BYTES = 10 << 20  # small days are never a spike, whatever the ratio
HOST_PREFIX = "host:"  # hosts' rows among the users' in the store


class Behaviour:
    """Device approvals, baselines, sightings and risk scores; one per engine."""

    def __init__(
        self,
        timezone: str = "UTC",
        groups: Mapping[str, str] | None = None,
        approvals: ApprovalView | None = None,
    ) -> None:
        self.zone = zoneinfo.ZoneInfo(timezone)
        self.approvals = approvals or ApprovalView()
        self.baselines = Baselines(dict(groups or {}))
        self.hosts = HostBaselines()
        self.risk = RiskBook()
        self.sightings = Sightings()
        self._offsets: dict[int, float] = {}
        # (user, time) of the latest enriched event whose risk fields were left for `complete`.
        self.deferred: tuple[str, float] | None = None

    def local(self, now: float) -> tuple[int, int]:
        """(local day number, local hour) of an epoch time in the collector's timezone."""
        hour_key = int(now // 3600)
        offset = self._offsets.get(hour_key)
        if offset is None:
            moment = dt.datetime.fromtimestamp(hour_key * 3600, dt.UTC).astimezone(self.zone)
            delta = moment.utcoffset()
            offset = delta.total_seconds() if delta is not None else 0.0
            if len(self._offsets) > 50_000:
                self._offsets.clear()
            self._offsets[hour_key] = offset
        local = now + offset
        return int(local // 86_400), int(local % 86_400 // 3600)

    def enrich(self, event: Mapping[str, Any], now: float, *, risk: bool = True) -> Mapping[str, Any]:
        """The event with approval, baseline and risk fields added (the same mapping if no user).

        With `risk` False (no policy the event meets reads the risk fields) a user's nonzero score
        and signals are not computed: `deferred` says whose they are, and `complete` adds them
        if an alert is to be built from the event (before anything changes the score)."""
        self.deferred = None
        user = event.get("user.name")
        serial = str(event.get("device.serial") or "")
        if not user and not serial:
            return event
        user = str(user or "")
        day, hour = self.local(now)
        action = str(event.get("event.action", ""))
        group = self.baselines.group_of(user)
        size = 0
        tagged = False
        if serial:
            written = event.get("file.size")
            size = written if isinstance(written, int) else 0
            tagged = bool(event.get("tags"))
        out: dict[str, Any] = {}  # the fields added, put on the event at the end (_with)
        # Fields left unset read as their defaults (fields.ENRICHED: false, 0): only what can be
        # set is written, which keeps the many events without a device cheap.
        host = str(event.get("host.name") or "")
        for_user = False
        if serial:
            # An attach names the user at the seat (agent/sensors/seat.py), or none (no logind, nobody
            # at the seat, an older agent): then the host's latest user is presumed.
            who = user or (self.hosts.user_on(host) if host else "")
            who_group = group if user else self.baselines.group_of(who)
            out["device.approved"] = self.approvals.approved(serial)
            out["device.approved_for_user"] = for_user = self.approvals.approved_for(serial, who, who_group)
        out["exfilguard.baseline.peer_group"] = group
        if serial and (action.startswith("device.") or action in ("file.write", "file.copy")):
            self.sightings.see(event, serial, str(event.get("@timestamp", "")), size, action == "file.write")
        if host:
            out["exfilguard.baseline.first_device_on_host"] = self.hosts.observe(host, day, serial, user)
        if not user:
            return _with(event, out)
        seen = self.baselines.observe(user, day, hour, action=action, serial=serial, size=size, tagged=tagged)
        base = seen.user
        first_use = seen.removable and base.warm and base.removable_days == 0
        out["exfilguard.baseline.warm"] = base.warm
        out["exfilguard.baseline.history_days"] = base.active_days
        out["exfilguard.baseline.removable_days"] = base.removable_days
        if seen.removable:
            out["exfilguard.baseline.first_removable_use"] = first_use
            out["exfilguard.baseline.first_device_use"] = seen.first_device_use
            out["exfilguard.baseline.unusual_hour"] = seen.unusual_hour
            out["exfilguard.baseline.files_today"] = base.today_files
            out["exfilguard.baseline.bytes_today"] = base.today_bytes
            share = base.today_tagged / base.today_bytes if base.today_bytes else 0.0
            out["exfilguard.baseline.tagged_share"] = round(share, 2)
            out["exfilguard.baseline.volume_ratio"] = seen.volume_ratio
            out["exfilguard.baseline.files_ratio"] = seen.files_ratio
            out["exfilguard.baseline.peer_ratio"] = seen.peer_ratio
            tagged_write = tagged and action == "file.write"
            self._signals(
                user, seen, first_use=first_use, for_user=for_user, tagged=tagged_write, now=now, day=day
            )
        standing = self.risk.standing(user, now, defer=not risk)
        if standing is None:
            self.deferred = (user, now)
            return _with(event, out)
        score, signals, reported = standing  # as _risk_fields, inline: every event of a user
        out["exfilguard.risk.score"] = score
        if score:
            out["exfilguard.risk.signals"] = signals
            if reported:
                out["exfilguard.risk.reported"] = True
        return _with(event, out)

    def complete(self, event: MutableMapping[str, Any]) -> None:
        """Add the risk fields `enrich` deferred to the event it enriched last (the same values:
        nothing changed the score since)."""
        if self.deferred is None:
            return
        user, now = self.deferred
        self.deferred = None
        out: dict[str, Any] = {}
        _risk_fields(out, self.risk.standing(user, now))
        for name, value in out.items():
            event[name] = value

    def _signals(
        self,
        user: str,
        seen: Observation,
        *,
        first_use: bool,
        for_user: bool,
        tagged: bool,
        now: float,
        day: int,
    ) -> None:
        risk = self.risk
        if first_use:
            risk.add(user, "first_removable_use", SIGNAL_POINTS["first_removable_use"], now, day)
        if seen.unusual_hour:
            risk.add(user, "unusual_hour", SIGNAL_POINTS["unusual_hour"], now, day)
        if seen.first_device_use and not for_user:
            risk.add(user, "new_unapproved_device", SIGNAL_POINTS["new_unapproved_device"], now, day)
        if tagged:
            risk.add(user, "tagged_write", SIGNAL_POINTS["tagged_write"], now, day)
        big = seen.user.today_bytes >= SPIKE_MIN_BYTES
        if big and seen.volume_ratio >= VOLUME_SPIKE_RATIO:
            risk.add(user, "volume_spike", SIGNAL_POINTS["volume_spike"], now, day)
        if big and seen.peer_ratio >= PEER_SPIKE_RATIO:
            risk.add(user, "peer_volume_spike", SIGNAL_POINTS["peer_volume_spike"], now, day)

    def alerted(self, alert: dict[str, Any], now: float, *, score: bool = True) -> None:
        """Count a raised alert: the user's risk grows by its severity (unless `score` is False:
        a policy on the risk score must not feed it), and the device's alert count."""
        user = str(alert.get("user.name") or "")
        if user:
            points = ALERT_POINTS.get(str(alert.get("severity")), 0.0) if score else 0.0
            # The alert keeps the score its event had (what its summary shows); later ones see this.
            self.risk.add(user, f"alert:{alert.get('policy.id')}", points, now, self.local(now)[0])
            if not score:  # a policy on the risk fields: this elevation is reported
                self.risk.report(user, now)
        serial = alert.get("device.serial")
        if serial:
            self.sightings.alerted(str(serial))

    def stats(self) -> dict[str, int]:
        """Figures for metrics: users and hosts with a baseline, devices seen, approvals in force."""
        return {
            "baseline_users": len(self.baselines.users),
            "baseline_hosts": len(self.hosts.hosts),
            "devices_seen": len(self.sightings.devices),
        }

    # ------------------------------------------------------------------ the store's copy

    def snapshot(
        self, users: set[str] | None = None, hosts: set[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Baselines (and risk) of the given users and hosts (default: all), JSON-ready: users by
        name, hosts as `host:NAME` (no user name holds a colon)."""
        bases = self.baselines.snapshot(users)
        risks = self.risk.snapshot()
        out: dict[str, dict[str, Any]] = {
            name: {"baseline": body, "risk": risks.get(name)} for name, body in bases.items()
        }
        for name, body in self.hosts.snapshot(hosts).items():
            out[HOST_PREFIX + name] = {"host": body}
        return out

    def restore(self, snapshots: Mapping[str, Mapping[str, Any]]) -> int:
        """Load what `snapshot` produced (from the store); returns how many users were loaded."""
        hosts = {
            n[len(HOST_PREFIX) :]: dict(s["host"])
            for n, s in snapshots.items()
            if n.startswith(HOST_PREFIX) and isinstance(s.get("host"), dict)
        }
        self.hosts.restore(hosts)
        bases = {n: dict(s["baseline"]) for n, s in snapshots.items() if isinstance(s.get("baseline"), dict)}
        risks = {n: dict(s["risk"]) for n, s in snapshots.items() if isinstance(s.get("risk"), dict)}
        self.risk.restore(risks)
        return self.baselines.restore(bases)


def _risk_fields(out: dict[str, Any], standing: tuple[float, list[str], bool] | None) -> None:
    """The risk fields of a user's standing (RiskBook.standing) into `out`."""
    score, signals, reported = standing or (0.0, [], False)
    out["exfilguard.risk.score"] = score
    if score:
        out["exfilguard.risk.signals"] = signals
        if reported:
            out["exfilguard.risk.reported"] = True


def _with(event: Mapping[str, Any], added: dict[str, Any]) -> Mapping[str, Any]:
    """The event with `added` on top; a lazy view of a stored event stays lazy (only the fields
    policies read are ever converted)."""
    if isinstance(event, EventView):
        return event.with_fields(added)
    return {**event, **added}
