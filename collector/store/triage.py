"""Alert triage: the statuses an alert can have, its append-only history, and the input limits.

Both stores keep the current status in a `status` column of `alerts` (what filters and
retention read) and every change as one row of `alert_triage` (who, when, from -> to, note),
written in the same transaction. The alert body stays exactly what the sinks received.

Statuses (a small fixed set; only `open` holds evidence against `exfilguard prune`):
    open            the default: needs an officer's attention
    resolved        a real incident, handled
    false_positive  not an incident (the policy fired on legitimate work)
    closed          no further action for another reason (duplicate, accepted risk, test)

Errors (subclasses of StoreError, so every caller of a store already handles them):
    AlertNotFound   some of the alert ids are not stored (`alert_ids`); nothing was changed
    InvalidTriage   a status, name or note outside the limits below (`field`, `reason`)
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from collector.store.base import StoreError

OPEN = "open"
STATUSES = ("open", "resolved", "false_positive", "closed")
CLOSED_STATUSES = tuple(s for s in STATUSES if s != OPEN)

MAX_IDS = 1000  # alerts changed by one command
MAX_ID_CHARS = 200
MAX_NOTE_CHARS = 4000
MAX_BY_CHARS = 200


class AlertNotFound(StoreError):
    """Some alert ids are not stored; `alert_ids` names every one of them (nothing was changed)."""

    def __init__(self, location: str, alert_ids: Sequence[str]) -> None:
        self.alert_ids = tuple(alert_ids)
        super().__init__(location, "no such alert: " + ", ".join(self.alert_ids))


class InvalidTriage(StoreError):
    """A triage input outside its limits: `field` (ids, status, by, note) and `reason`."""

    def __init__(self, location: str, field: str, reason: str) -> None:
        super().__init__(location, f"{field}: {reason}")
        self.field = field
        self.reason = reason  # without the field name: callers print both


@dataclass(frozen=True)
class TriageEntry:
    """One status change of one alert, as stored (never updated or deleted)."""

    alert_id: str
    at: str  # ECS time
    by: str
    from_status: str
    to_status: str
    note: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`exfilguard alerts show --json`, `close --json`): the fields in this
        order, the statuses named from and to."""
        return {k.removesuffix("_status"): v for k, v in asdict(self).items()}


def printable(text: str, *, newlines: bool) -> bool:
    """No control characters (newlines and tabs only when `newlines`): safe to show and store."""
    # Control characters (ANSI escapes above all) would rewrite an officer's terminal when shown.
    allowed = {"\n", "\t"} if newlines else set()
    return all(ch in allowed or unicodedata.category(ch) not in ("Cc", "Cf") for ch in text)


def check_triage(location: str, alert_ids: Sequence[str], status: str, by: str, note: str) -> list[str]:
    """Validate a triage request; returns the alert ids without repeats, in the order given."""
    if status not in STATUSES:
        raise InvalidTriage(location, "status", f"{status!r} is not one of {', '.join(STATUSES)}")
    ids = list(dict.fromkeys(alert_ids))
    if not ids:
        raise InvalidTriage(location, "ids", "give at least one alert id")
    if len(ids) > MAX_IDS:
        raise InvalidTriage(location, "ids", f"at most {MAX_IDS} alerts at once, got {len(ids)}")
    for alert_id in ids:
        if not alert_id or len(alert_id) > MAX_ID_CHARS or not printable(alert_id, newlines=False):
            raise InvalidTriage(location, "ids", f"not an alert id: {alert_id[:MAX_ID_CHARS]!r}")
    if not by.strip() or len(by) > MAX_BY_CHARS or not printable(by, newlines=False):
        raise InvalidTriage(location, "by", f"a name of 1 to {MAX_BY_CHARS} printable characters")
    if not note.strip():
        raise InvalidTriage(location, "note", "a note is required (say why)")
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidTriage(location, "note", f"at most {MAX_NOTE_CHARS} characters, got {len(note)}")
    if not printable(note, newlines=True):
        raise InvalidTriage(location, "note", "control characters are not allowed")
    return ids


def check_statuses(location: str, statuses: Sequence[str] | None) -> list[str] | None:
    """Validate a status filter (None: no filter)."""
    if statuses is None:
        return None
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise InvalidTriage(location, "status", f"{unknown[0]!r} is not one of {', '.join(STATUSES)}")
    return list(dict.fromkeys(statuses))


def with_status(body: dict[str, Any], status: str) -> dict[str, Any]:
    """The alert as callers see it: the stored body plus its current `status`."""
    body["status"] = status
    return body
