"""A per-user risk score: signals and medium alerts add points; the total halves every HALF_LIFE.

Each signal counts once per user and local day (an IT admin plugging sticks all day is one
signal, not fifty); each policy's alerts count once per user and day at their severity's weight.
The score is what alerts show as `exfilguard.risk.score`, and what policies may test.

An elevation is the time a user's score stays at or above ELEVATED. The first alert of a policy
that tests the risk fields during it marks it reported (`exfilguard.risk.reported`), so the
shipped `user-risk-elevated` fires once per elevation, not again with each stick the user plugs
in or on every day the slowly decaying score stays high; it is reported anew only after the
score fell below ELEVATED and rose again. The mark is kept with the score across restarts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

HALF_LIFE_SECONDS = 7 * 86_400.0
MAX_SIGNALS = 8  # the latest signals shown with a score
ELEVATED = 60.0  # at or above: several weaker signals together (policies/baseline.yaml: user-risk-elevated)

# Points of each baseline signal (names as in `exfilguard.risk.signals`).
SIGNAL_POINTS = {
    "first_removable_use": 30.0,
    "unusual_hour": 20.0,
    "volume_spike": 25.0,
    "peer_volume_spike": 10.0,
    "tagged_write": 10.0,
    "new_unapproved_device": 5.0,
}
# Points of an alert by severity. Low alerts are context, not risk; high and critical alerts page
# on their own evidence, so the score measures what has not paged yet (and a risk policy never
# fires merely because a critical one just did).
ALERT_POINTS = {"low": 0.0, "medium": 10.0, "high": 0.0, "critical": 0.0}


@dataclass
class UserRisk:
    """One user's score at `at` (epoch seconds), with the latest signal names and what counted today."""

    score: float = 0.0
    at: float = 0.0
    signals: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_SIGNALS))
    day: int = -1
    counted: set[str] = field(default_factory=set)
    reported: bool = False  # the current elevation was alerted by a policy on the risk fields

    def value(self, now: float) -> float:
        """The score decayed to `now`."""
        if now <= self.at or self.score <= 0:
            return self.score
        return float(self.score * 0.5 ** ((now - self.at) / HALF_LIFE_SECONDS))


class RiskBook:
    """Every user's risk score."""

    def __init__(self) -> None:
        self.users: dict[str, UserRisk] = {}

    def add(self, user: str, name: str, points: float, now: float, day: int) -> None:
        """Add a signal's or an alert's points, once per user, name and local day."""
        risk = self.users.get(user)
        if risk is None:
            risk = self.users[user] = UserRisk()
        if day != risk.day:
            risk.day, risk.counted = day, set()
        if name in risk.counted:
            return
        risk.counted.add(name)
        if points <= 0:
            return
        risk.score = risk.value(now) + points
        risk.at = max(now, risk.at)
        risk.signals.append(name)

    def score(self, user: str, now: float) -> float:
        """The user's score now (0 for someone never seen), rounded for display."""
        risk = self.users.get(user)
        if risk is None or risk.score <= 0:  # most users, most of the time
            return 0.0
        return round(risk.value(now), 1)

    def standing(self, user: str, now: float, *, defer: bool = False) -> tuple[float, list[str], bool] | None:
        """score(), signals() and reported() in one call, the decay computed once: what the
        enrichment adds to every event of a user with a score (a medium alert gives one). With
        `defer`, None instead for a nonzero score this call would change nothing about (no
        reported elevation to re-arm): the enrichment computes it only if an alert needs it."""
        risk = self.users.get(user)
        if risk is None or risk.score <= 0:  # most users, most of the time
            return 0.0, [], False
        if defer and not risk.reported:
            return None
        value = risk.value(now)
        score = round(value, 1)
        if not score:
            return score, [], False
        if risk.reported and value < ELEVATED:
            risk.reported = False
        return score, list(risk.signals), risk.reported

    def reported(self, user: str, now: float) -> bool:
        """True while the user's current elevation was already alerted (re-armed below ELEVATED)."""
        risk = self.users.get(user)
        if risk is None or not risk.reported:
            return False
        if risk.value(now) < ELEVATED:
            risk.reported = False
        return risk.reported

    def report(self, user: str, now: float) -> None:
        """A policy on the risk fields alerted: mark the user's elevation (if they are at one) reported."""
        risk = self.users.get(user)
        if risk is not None and risk.value(now) >= ELEVATED:
            risk.reported = True

    def signals(self, user: str) -> list[str]:
        """The latest signal and alert names that raised the user's score, oldest first."""
        risk = self.users.get(user)
        return list(risk.signals) if risk is not None else []

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON-ready scores (kept in the store with the baselines)."""
        return {
            name: {
                "score": r.score,
                "at": r.at,
                "signals": list(r.signals),
                "day": r.day,
                "counted": sorted(r.counted),
                "reported": r.reported,
            }
            for name, r in self.users.items()
            if r.score > 0
        }

    def restore(self, snapshots: dict[str, dict[str, Any]]) -> None:
        """Load scores from a snapshot; malformed entries are skipped."""
        for name, data in snapshots.items():
            try:
                signals = deque((str(s) for s in data["signals"]), maxlen=MAX_SIGNALS)
                counted = {str(c) for c in data.get("counted", ())}
                day = int(data.get("day", -1))
                reported = bool(data.get("reported", False))
                self.users[name] = UserRisk(float(data["score"]), float(data["at"]), signals, day, counted,
                                            reported)  # fmt: skip
            except (KeyError, TypeError, ValueError):
                continue
