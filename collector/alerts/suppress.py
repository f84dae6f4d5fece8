"""Suppressor: repeats of the same alert for the same group within a window fold into one, with a count.

The first alert of a group goes out at once (the officer hears within seconds). Repeats inside
the window are not sent; when the window closes, one follow-up alert carries how many were folded
(`count`, `exfilguard.alert.repeats`) and points at the first (`exfilguard.alert.repeat_of`).
Time is the alerts' event time, so `policy test` replays fold exactly as the live collector does.
At most MAX_GROUPS groups are tracked; the oldest is closed early (its follow-up sent) beyond that.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.alerts.alert import Alert

MAX_GROUPS = 100_000
MAX_EVIDENCE = 100


@dataclass
class _Open:
    first: Alert
    until: float
    repeats: int = 0
    count: int = 0
    evidence: list[str] = field(default_factory=list)
    latest: Callable[[], Alert] | None = None  # builds the latest repeat's alert, only if needed


class Suppressor:
    """Folds repeated alerts per (policy, group); `admit` says whether to send, `due` yields follow-ups."""

    def __init__(self, window_seconds: float = 600.0) -> None:
        self.window = window_seconds
        self._open: OrderedDict[tuple[object, ...], _Open] = OrderedDict()
        self._overflow: list[Alert] = []

    def __len__(self) -> int:
        return len(self._open)

    def fold(
        self,
        group: tuple[object, ...],
        time: float,
        count: int,
        evidence: list[str],
        build: Callable[[], Alert],
    ) -> bool:
        """Fold a repeat into its open group (True), or say the group has no open window (False).

        `build` makes the repeat's alert; it is called at most once, when the follow-up goes out.
        """
        entry = self._open.get(group)
        if entry is None or time >= entry.until:
            return False
        entry.repeats += 1
        entry.count += count
        room = MAX_EVIDENCE - len(entry.evidence)
        if room > 0:
            entry.evidence.extend(evidence[:room])
        entry.latest = build
        return True

    def admit(self, alert: Alert) -> bool:
        """True if the alert should be sent now (it opens a window); False if it was folded."""
        fields = alert.fields
        if self.fold(
            alert.group, alert.time, int(fields.get("count", 1)), fields.get("evidence", []), lambda: alert
        ):
            return False
        window = self.window if alert.suppress_seconds is None else alert.suppress_seconds
        if alert.group in self._open:
            self._close(alert.group)
        if window <= 0:
            return True
        self._open[alert.group] = _Open(first=alert, until=alert.time + window)
        while len(self._open) > MAX_GROUPS:
            self._close(next(iter(self._open)))
        return True

    def due(self, now: float) -> list[Alert]:
        """Follow-up alerts for groups whose window closed by `now` (and any closed early)."""
        for key in [k for k, e in self._open.items() if e.until <= now]:
            self._close(key)
        out, self._overflow = self._overflow, []
        return out

    def _close(self, key: tuple[object, ...]) -> None:
        entry = self._open.pop(key)
        if not entry.repeats or entry.latest is None:
            return
        latest = entry.latest()
        fields = dict(latest.fields)
        fields["id"] = str(uuid.uuid4())
        fields["count"] = entry.count
        fields["evidence"] = entry.evidence
        fields["event.start"] = entry.first.fields.get("event.end") or fields.get("event.start")
        fields["exfilguard.alert.repeats"] = entry.repeats
        fields["exfilguard.alert.repeat_of"] = entry.first.id
        fields["summary"] = f"{entry.repeats} more since the first alert: {fields.get('summary', '')}"
        self._overflow.append(Alert(fields, group=key, time=latest.time))
