"""Per-user baselines and risk scores in the store, so a restart does not make everyone new again.

    book = BaselineBook(store.domain())
    book.save(behaviour.snapshot(dirty_users))     # the collector, every BASELINE_SAVE_SECONDS
    behaviour.restore(book.load())                 # at start

One row per user: `baselines (user_name, updated, body)`, the body the JSON snapshot of
collector/behaviour (baseline and risk). Same SQL on SQLite and PostgreSQL (domain.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from collector.store.domain import DomainSql
from common.ecstime import ecs_now

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS baselines (user_name TEXT PRIMARY KEY, updated TEXT NOT NULL,"
    " body TEXT NOT NULL)",
)
_CHUNK = 1000


class BaselineBook:
    """Every user's baseline snapshot."""

    def __init__(self, sql: DomainSql) -> None:
        self.sql = sql

    def save(self, snapshots: Mapping[str, Mapping[str, Any]]) -> int:
        """Insert or replace the given users' snapshots; how many (0 on a read-only store)."""
        if not snapshots or not self.sql.ensure("baselines", _SCHEMA):
            return 0
        now = ecs_now()
        rows = [(user, now, json.dumps(body, sort_keys=True)) for user, body in snapshots.items()]
        for start in range(0, len(rows), _CHUNK):  # short transactions: ingest waits on the same lock
            with self.sql.transaction() as tx:
                tx.many(
                    "INSERT INTO baselines (user_name, updated, body) VALUES (?, ?, ?)"
                    " ON CONFLICT (user_name) DO UPDATE SET updated = excluded.updated, body = excluded.body",
                    rows[start : start + _CHUNK],
                )
        return len(rows)

    def load(self) -> dict[str, dict[str, Any]]:
        """Every stored snapshot by user (malformed rows left out)."""
        self.sql.ensure("baselines", _SCHEMA)
        with self.sql.transaction() as tx:
            if not tx.has_table("baselines"):
                return {}
            rows = tx.query("SELECT user_name, body FROM baselines")
        out: dict[str, dict[str, Any]] = {}
        for user, body in rows:
            try:
                value = json.loads(body)
            except ValueError:
                continue
            if isinstance(value, dict):
                out[str(user)] = value
        return out
