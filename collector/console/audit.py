"""The console's audit log: who viewed, triaged and exported what, when; append-only, exportable.

    AuditLog(store.domain()).record("carol", "view", "alert", alert_id)

Table `console_audit (id, at, user_name, action, kind, target, detail)`, made append-only by a
trigger on both databases, like alert_triage. Actions: login, login_refused, logout, view,
triage, case, export.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector.store.domain import DomainBook
from common.ecstime import ecs_now

MAX_DETAIL_CHARS = 2000
_last_ns = 0
_TABLE = "console_audit"


_CREATE = (
    "CREATE TABLE IF NOT EXISTS console_audit (id TEXT PRIMARY KEY, at TEXT NOT NULL,"
    " user_name TEXT NOT NULL, action TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,"
    " detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS console_audit_at ON console_audit (at, id)",
    "CREATE INDEX IF NOT EXISTS console_audit_target ON console_audit (kind, target, at)",
)


def ordered_id() -> str:
    """A row id that sorts in the order rows were written by this process (entries written in one
    transaction share their `at`), unique across processes by its random tail."""
    global _last_ns  # noqa: PLW0603 (one counter per process)
    _last_ns = max(time.time_ns(), _last_ns + 1)
    return f"{_last_ns:020d}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    at: str
    user: str
    action: str
    kind: str  # what was acted on: alert, case, queue, timeline, fleet, audit, session
    target: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the audit log export)."""
        return {"at": self.at, "user": self.user, "action": self.action, "kind": self.kind,
                "target": self.target, "detail": self.detail}  # fmt: skip


class AuditLog(DomainBook):
    """The audit log of one store."""

    TABLES = _TABLE
    CREATE = _CREATE
    APPEND_ONLY = (_TABLE,)

    def record(self, user: str, action: str, kind: str, target: str = "", detail: str = "") -> None:
        """Append one entry, timed now."""
        self.record_many([AuditEntry(ecs_now(), user, action, kind, target, detail)])

    def record_many(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries in one transaction, in the order given."""
        if not entries:
            return
        self.ensure()
        with self.sql.transaction() as tx:
            tx.many(
                "INSERT INTO console_audit (id, at, user_name, action, kind, target, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        ordered_id(),
                        e.at,
                        e.user,
                        e.action,
                        e.kind,
                        e.target[:500],
                        e.detail[:MAX_DETAIL_CHARS],
                    )
                    for e in entries
                ],
            )

    def entries(
        self, *, kind: str | None = None, targets: tuple[str, ...] = (), limit: int = 1000
    ) -> list[AuditEntry]:
        """The newest `limit` entries (of one kind and targets, if given), oldest first."""
        sql = "SELECT at, user_name, action, kind, target, detail FROM console_audit"
        params: list[Any] = []
        clauses = []
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if targets:
            clauses.append("target IN (" + ", ".join("?" for _ in targets) + ")")
            params.extend(targets)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        params.append(limit)
        with self.sql.transaction() as tx:
            if not tx.has_table(_TABLE):
                return []
            rows = tx.query(sql + " ORDER BY at DESC, id DESC LIMIT ?", params)
        return [AuditEntry(*(str(v) for v in r)) for r in reversed(rows)]
