"""Cases: alerts grouped under a title, an owner, a status and notes, for HR, legal or the police.

    book = CaseBook(store.domain())
    case = book.open_case("Departing engineer, customer DB", owner="carol", by="carol", alerts=[a1, a2])
    book.note(case.id, "HR informed", by="carol")

Tables (same SQL on SQLite and PostgreSQL, collector/store/domain.py):
    console_cases         id -> title, owner, status, created, updated
    console_case_alerts   (case id, alert id): the alerts a case holds
    console_case_events   (case id, agent id, sequence) -> event id: events added by hand (a timeline)
    console_case_history  every creation, note, status and owner change, alert added and export;
                          append-only (a trigger refuses UPDATE and DELETE), like alert_triage
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector.console.audit import ordered_id
from collector.console.errors import InvalidCase, NoSuchCase
from collector.store.domain import DomainBook, Transaction
from collector.store.triage import MAX_NOTE_CHARS, printable
from common.ecstime import ecs_now

STATUSES = ("open", "in_progress", "closed")
MAX_TITLE_CHARS = 200
MAX_ALERTS = 1000
_HISTORY = "console_case_history"


_CREATE = (
    "CREATE TABLE IF NOT EXISTS console_cases (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
    " owner TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS console_case_alerts (case_id TEXT NOT NULL, alert_id TEXT NOT NULL,"
    " added TEXT NOT NULL, by_name TEXT NOT NULL, PRIMARY KEY (case_id, alert_id))",
    "CREATE TABLE IF NOT EXISTS console_case_events (case_id TEXT NOT NULL, agent_id TEXT NOT NULL,"
    " sequence BIGINT NOT NULL, event_id TEXT NOT NULL, added TEXT NOT NULL, by_name TEXT NOT NULL,"
    " PRIMARY KEY (case_id, agent_id, sequence))",
    "CREATE TABLE IF NOT EXISTS console_case_history (id TEXT PRIMARY KEY, case_id TEXT NOT NULL,"
    " at TEXT NOT NULL, by_name TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS console_case_history_case ON console_case_history (case_id, at, id)",
)


@dataclass(frozen=True)
class Case:
    """One case as stored."""

    id: str
    title: str
    owner: str
    status: str
    created: str
    updated: str


@dataclass(frozen=True)
class CaseChange:
    """One entry of a case's history."""

    at: str
    by: str
    action: str  # created, note, status, owner, alert, export
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"at": self.at, "by": self.by, "action": self.action, "detail": self.detail}


def _text(location: str, field: str, value: str, limit: int, *, newlines: bool = False) -> str:
    if not value.strip():
        raise InvalidCase(location, field, "must not be empty")
    if len(value) > limit:
        raise InvalidCase(location, field, f"at most {limit} characters, got {len(value)}")
    if not printable(value, newlines=newlines):
        raise InvalidCase(location, field, "control characters are not allowed")
    return value


class CaseBook(DomainBook):
    """The console's cases in one store."""

    TABLES = "console_cases"
    CREATE = _CREATE
    APPEND_ONLY = (_HISTORY,)

    def open_case(self, title: str, *, owner: str, by: str, alerts: Sequence[str] = ()) -> Case:
        """A new open case, holding `alerts` (ids of stored alerts)."""
        _text(self.location, "title", title, MAX_TITLE_CHARS)
        _text(self.location, "owner", owner, MAX_TITLE_CHARS)
        self.ensure()
        now = ecs_now()
        # Short and readable in a report or on the phone; random so ids reveal no case count.
        case = Case("C-" + secrets.token_hex(4).upper(), title, owner, "open", now, now)
        with self.sql.transaction() as tx:
            tx.query(
                "INSERT INTO console_cases (id, title, owner, status, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (case.id, title, owner, "open", now, now),
            )
            self._log(tx, case.id, CaseChange(now, by, "created", f"{title} (owner {owner})"))
            self._add_alerts(tx, case.id, alerts, now, by)
        return case

    def add_alerts(self, case_id: str, alerts: Sequence[str], *, by: str) -> int:
        """Add alerts to a case (those it holds already are left alone); how many were new."""
        now = ecs_now()
        with self.sql.transaction() as tx:
            self._case(tx, case_id)
            added = self._add_alerts(tx, case_id, alerts, now, by)
            if added:
                tx.query("UPDATE console_cases SET updated = ? WHERE id = ?", (now, case_id))
        return added

    def _add_alerts(self, tx: Transaction, case_id: str, alerts: Sequence[str], now: str, by: str) -> int:
        ids = list(dict.fromkeys(alerts))
        if len(ids) > MAX_ALERTS:
            raise InvalidCase(self.location, "alerts", f"at most {MAX_ALERTS} at once, got {len(ids)}")
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        stored = {str(r[0]) for r in tx.query(f"SELECT id FROM alerts WHERE id IN ({marks})", ids)}  # noqa: S608
        missing = [i for i in ids if i not in stored]
        if missing:
            raise InvalidCase(self.location, "alerts", "no such alert: " + ", ".join(missing[:10]))
        held = {
            str(r[0])
            for r in tx.query(
                f"SELECT alert_id FROM console_case_alerts WHERE case_id = ? AND alert_id IN ({marks})",  # noqa: S608
                [case_id, *ids],
            )
        }
        new = [i for i in ids if i not in held]
        tx.many(
            "INSERT INTO console_case_alerts (case_id, alert_id, added, by_name) VALUES (?, ?, ?, ?)",
            [(case_id, i, now, by) for i in new],
        )
        for alert_id in new:
            self._log(tx, case_id, CaseChange(now, by, "alert", alert_id))
        return len(new)

    def add_events(self, case_id: str, events: Sequence[tuple[str, int]], *, by: str) -> int:
        """Add stored events, named by (agent id, sequence), to a case; how many were new."""
        refs = list(dict.fromkeys(events))
        if len(refs) > MAX_ALERTS:
            raise InvalidCase(self.location, "events", f"at most {MAX_ALERTS} at once, got {len(refs)}")
        now = ecs_now()
        added = 0
        with self.sql.transaction() as tx:
            self._case(tx, case_id)
            for agent_id, sequence in refs:
                # The events' key: one index look-up each, whatever the store's size.
                found = tx.query(
                    "SELECT event_id FROM events WHERE agent_id = ? AND sequence = ?", (agent_id, sequence)
                )
                if not found:
                    raise InvalidCase(self.location, "events", f"no such event: {agent_id} #{sequence}")
                held = tx.query(
                    "SELECT 1 FROM console_case_events WHERE case_id = ? AND agent_id = ? AND sequence = ?",
                    (case_id, agent_id, sequence),
                )
                if held:
                    continue
                event_id = str(found[0][0])
                tx.query(
                    "INSERT INTO console_case_events (case_id, agent_id, sequence, event_id, added, by_name)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (case_id, agent_id, sequence, event_id, now, by),
                )
                self._log(tx, case_id, CaseChange(now, by, "event", f"{agent_id} #{sequence} ({event_id})"))
                added += 1
            if added:
                tx.query("UPDATE console_cases SET updated = ? WHERE id = ?", (now, case_id))
        return added

    def events_of(self, case_id: str) -> list[tuple[str, int, str]]:
        """The events added to a case by hand: (agent id, sequence, event id), in the order added."""
        with self.sql.transaction() as tx:
            if not tx.has_table("console_case_events"):
                return []
            rows = tx.query(
                "SELECT agent_id, sequence, event_id FROM console_case_events WHERE case_id = ?"
                " ORDER BY added, agent_id, sequence",
                (case_id,),
            )
        return [(str(a), int(q), str(e)) for a, q, e in rows]

    def note(self, case_id: str, note: str, *, by: str) -> None:
        """Append a note."""
        _text(self.location, "note", note, MAX_NOTE_CHARS, newlines=True)
        self._change(case_id, by, "note", note)

    def set_status(self, case_id: str, status: str, note: str, *, by: str) -> None:
        """Change the status, saying why."""
        if status not in STATUSES:
            raise InvalidCase(self.location, "status", f"{status!r} is not one of {', '.join(STATUSES)}")
        _text(self.location, "note", note, MAX_NOTE_CHARS, newlines=True)
        self._change(case_id, by, "status", f"{status}: {note}", column=("status", status))

    def set_owner(self, case_id: str, owner: str, *, by: str) -> None:
        """Hand the case to someone else."""
        _text(self.location, "owner", owner, MAX_TITLE_CHARS)
        self._change(case_id, by, "owner", owner, column=("owner", owner))

    def exported(self, case_id: str, detail: str, *, by: str) -> None:
        """Record that the case was exported (chain of custody)."""
        self._change(case_id, by, "export", detail)

    def _change(
        self, case_id: str, by: str, action: str, detail: str, column: tuple[str, str] | None = None
    ) -> None:
        now = ecs_now()
        with self.sql.transaction() as tx:
            self._case(tx, case_id)
            if column is not None:
                name, value = column  # name: "status" or "owner", from the callers above
                update = f"UPDATE console_cases SET {name} = ?, updated = ? WHERE id = ?"  # noqa: S608
                tx.query(update, (value, now, case_id))
            else:
                tx.query("UPDATE console_cases SET updated = ? WHERE id = ?", (now, case_id))
            self._log(tx, case_id, CaseChange(now, by, action, detail))

    def _log(self, tx: Transaction, case_id: str, change: CaseChange) -> None:
        tx.query(
            "INSERT INTO console_case_history (id, case_id, at, by_name, action, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ordered_id(), case_id, change.at, change.by, change.action, change.detail),
        )

    def _case(self, tx: Transaction, case_id: str) -> Case:
        rows = tx.query(
            "SELECT id, title, owner, status, created, updated FROM console_cases WHERE id = ?", (case_id,)
        )
        if not rows:
            raise NoSuchCase(self.location, case_id)
        return Case(*(str(v) for v in rows[0]))

    # ------------------------------------------------------------------ reads

    def case(self, case_id: str) -> tuple[Case, list[str], list[CaseChange]]:
        """A case, the ids of its alerts (in the order added) and its history; NoSuchCase."""
        with self.sql.transaction() as tx:
            if not tx.has_table("console_cases"):
                raise NoSuchCase(self.location, case_id)
            case = self._case(tx, case_id)
            alerts = [
                str(r[0])
                for r in tx.query(
                    "SELECT alert_id FROM console_case_alerts WHERE case_id = ? ORDER BY added, alert_id",
                    (case_id,),
                )
            ]
            history = [
                CaseChange(*(str(v) for v in r))
                for r in tx.query(
                    "SELECT at, by_name, action, detail FROM console_case_history WHERE case_id = ?"
                    " ORDER BY at, id",
                    (case_id,),
                )
            ]
        return case, alerts, history

    def cases(self, *, status: str | None = None, limit: int = 500) -> list[tuple[Case, int]]:
        """Cases (of one status, if given), most recently changed first, with their alert counts."""
        sql = (
            "SELECT c.id, c.title, c.owner, c.status, c.created, c.updated,"
            " (SELECT COUNT(*) FROM console_case_alerts a WHERE a.case_id = c.id) FROM console_cases c"
        )
        params: list[Any] = []
        if status is not None:
            sql += " WHERE c.status = ?"
            params.append(status)
        params.append(limit)
        with self.sql.transaction() as tx:
            if not tx.has_table("console_cases"):
                return []
            rows = tx.query(sql + " ORDER BY c.updated DESC, c.id LIMIT ?", params)
        return [(Case(*(str(v) for v in r[:6])), int(r[6])) for r in rows]

    def cases_of_alert(self, alert_id: str) -> list[str]:
        """Ids of the cases that hold an alert."""
        with self.sql.transaction() as tx:
            if not tx.has_table("console_case_alerts"):
                return []
            rows = tx.query(
                "SELECT case_id FROM console_case_alerts WHERE alert_id = ? ORDER BY case_id", (alert_id,)
            )
        return [str(r[0]) for r in rows]
