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
from typing import Any

from collector.alerts.alert import RaisedAlert

MAX_GROUPS = 100_000
MAX_EVIDENCE = 100


@dataclass
class _Open:
    first: RaisedAlert
    until: float
    repeats: int = 0
    count: int = 0
    evidence: list[str] = field(default_factory=list)
    latest: Callable[[], RaisedAlert] | None = None  # builds the latest repeat's alert, only if needed


class Suppressor:
    """Folds repeated alerts per (policy, group); `admit` says whether to send, `due` yields follow-ups."""

    def __init__(self, window_seconds: float = 600.0) -> None:
        self.window = window_seconds
        self._open: OrderedDict[tuple[object, ...], _Open] = OrderedDict()
        self._overflow: list[RaisedAlert] = []
        # Groups opened, folded into or closed since the fleet evaluator last saved them (None:
        # nobody saves them, a single collector keeps its windows in memory only).
        self.touched: set[tuple[object, ...]] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def fold(
        self,
        group: tuple[object, ...],
        time: float,
        count: int,
        evidence: list[str],
        build: Callable[[], RaisedAlert],
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
        if self.touched is not None:
            self.touched.add(group)
        return True

    def admit(self, raised: RaisedAlert) -> bool:
        """True if the alert should be sent now (it opens a window); False if it was folded."""
        alert = raised.alert
        if self.fold(
            raised.group, raised.time, int(alert.get("count", 1)), alert.get("evidence", []), lambda: raised
        ):
            return False
        window = self.window if raised.suppress_seconds is None else raised.suppress_seconds
        if raised.group in self._open:
            self._close(raised.group)
        if window <= 0:
            return True
        self._open[raised.group] = _Open(first=raised, until=raised.time + window)
        if self.touched is not None:
            self.touched.add(raised.group)
        while len(self._open) > MAX_GROUPS:
            self._close(next(iter(self._open)))
        return True

    def due(self, now: float) -> list[RaisedAlert]:
        """Follow-up alerts for groups whose window closed by `now` (and any closed early)."""
        for key in [k for k, e in self._open.items() if e.until <= now]:
            self._close(key)
        out, self._overflow = self._overflow, []
        return out

    def state(self, key: tuple[object, ...]) -> tuple[float, dict[str, Any]] | None:
        """An open window as (until, JSON-able state) for the store; None once it is closed."""
        entry = self._open.get(key)
        if entry is None:
            return None
        latest = entry.latest() if entry.latest is not None else None
        return entry.until, {
            "first": _saved(entry.first),
            "repeats": entry.repeats,
            "count": entry.count,
            "evidence": entry.evidence,
            "latest": _saved(latest) if latest is not None else None,
        }

    def restore(self, key: tuple[object, ...], until: float, state: dict[str, Any]) -> None:
        """Open a window again as `state` saved it (a new fleet evaluator taking over)."""
        latest = _loaded(state["latest"], key) if state.get("latest") else None
        self._open[key] = _Open(
            first=_loaded(state["first"], key),
            until=until,
            repeats=int(state.get("repeats", 0)),
            count=int(state.get("count", 0)),
            evidence=list(state.get("evidence", [])),
            latest=(lambda: latest) if latest is not None else None,
        )

    def _close(self, key: tuple[object, ...]) -> None:
        entry = self._open.pop(key)
        if self.touched is not None:
            self.touched.add(key)
        if not entry.repeats or entry.latest is None:
            return
        latest = entry.latest()
        alert = dict(latest.alert)
        alert["id"] = str(uuid.uuid4())
        alert["count"] = entry.count
        alert["evidence"] = entry.evidence
        alert["event.start"] = entry.first.alert.get("event.end") or alert.get("event.start")
        alert["exfilguard.alert.repeats"] = entry.repeats
        alert["exfilguard.alert.repeat_of"] = entry.first.id
        alert["summary"] = f"{entry.repeats} more since the first alert: {alert.get('summary', '')}"
        self._overflow.append(RaisedAlert(alert, group=key, time=latest.time))


def _saved(raised: RaisedAlert) -> dict[str, Any]:
    return {"alert": raised.alert, "time": raised.time, "suppress_seconds": raised.suppress_seconds}


def _loaded(saved: dict[str, Any], key: tuple[object, ...]) -> RaisedAlert:
    return RaisedAlert(
        dict(saved["alert"]), group=key, suppress_seconds=saved.get("suppress_seconds"),
        time=float(saved["time"]),
    )  # fmt: skip
