"""The ledger of the SQLite store (see collector/store/ledger.py), on the file with its own connection.

Tables it adds (created on first prune): `evidence_checkpoints`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from collector.store import triage
from collector.store.ledger import Checkpoint, Ledger, LedgerError, PruneRefused
from common.ecstime import ecs_now

_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS evidence_checkpoints (
    agent_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    chain BLOB NOT NULL,
    pruned_at TEXT NOT NULL,
    pruned_total INTEGER NOT NULL
)
"""

_PROTECTED = (
    "SELECT agent_id, MIN(sequence) FROM events WHERE event_id IN"
    " (SELECT j.value FROM alerts, json_each(alerts.body, '$.evidence') AS j WHERE alerts.status = ?)"
    " GROUP BY agent_id"
)
_PROTECTED_V1 = (
    "SELECT agent_id, MIN(sequence) FROM events WHERE event_id IN"
    " (SELECT j.value FROM alerts, json_each(alerts.body, '$.evidence') AS j WHERE"
    " COALESCE(json_extract(alerts.body, '$.status'), 'open') NOT IN (SELECT value FROM json_each(?)))"
    " GROUP BY agent_id"
)


class SqliteLedger(Ledger):
    """Evidence queries and pruning on the store's SQLite file."""

    def __init__(self, path: str | Path, *, readonly: bool = True) -> None:
        self.location = str(path)
        p = Path(path)
        if not p.exists():
            raise LedgerError(self.location, "no such store (has the collector run yet?)")
        mode = "ro" if readonly else "rw"
        try:
            self._db = sqlite3.connect(
                f"file:{quote(str(p.resolve()))}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._has_checkpoints = bool(
                self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evidence_checkpoints'"
                ).fetchone()
            )
        except sqlite3.Error as exc:
            raise LedgerError(self.location, f"cannot open: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # ------------------------------------------------------------------ reading

    def _stored_chain(self, agent_id: str, sequence: int) -> bytes | None:
        row = self._query_one(
            "SELECT chain FROM events WHERE agent_id = ? AND sequence = ?", (agent_id, sequence)
        )
        return None if row is None or row[0] is None else bytes(row[0])

    def checkpoint(self, agent_id: str) -> Checkpoint | None:
        """The agent's checkpoint, if it was ever pruned."""
        if not self._has_checkpoints:
            return None
        row = self._query_one(
            "SELECT agent_id, sequence, chain, pruned_at, pruned_total FROM evidence_checkpoints"
            " WHERE agent_id = ?",
            (agent_id,),
        )
        return None if row is None else Checkpoint(row[0], int(row[1]), bytes(row[2]), row[3], int(row[4]))

    def checkpoints(self) -> dict[str, Checkpoint]:
        """Every agent's checkpoint."""
        if not self._has_checkpoints:
            return {}
        rows = self._query(
            "SELECT agent_id, sequence, chain, pruned_at, pruned_total FROM evidence_checkpoints", ()
        )
        return {r[0]: Checkpoint(r[0], int(r[1]), bytes(r[2]), r[3], int(r[4])) for r in rows}

    def _sealed(self) -> list[tuple[str, int]]:
        rows = self._query("SELECT agent_id, watermark FROM chains ORDER BY agent_id", ())
        return [(str(r[0]), int(r[1])) for r in rows]

    def alert_evidence(self, alert_ids: Iterable[str] = (), policies: Iterable[str] = ()) -> set[str]:
        """Event ids referenced by the given alerts and by every alert of the given policies."""
        ids, pols = list(alert_ids), list(policies)
        found: set[str] = set()
        if not ids and not pols:
            return found
        sql = "SELECT body FROM alerts WHERE id IN (SELECT value FROM json_each(?))"
        sql += " OR policy_id IN (SELECT value FROM json_each(?))"
        for (body,) in self._iterate(sql, (json.dumps(ids), json.dumps(pols))):
            evidence = json.loads(body).get("evidence", [])
            if isinstance(evidence, list):
                found.update(str(e) for e in evidence)
        return found

    def alerts_exist(self, alert_ids: Iterable[str]) -> set[str]:
        """Which of these alert ids are stored."""
        rows = self._query(
            "SELECT id FROM alerts WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(alert_ids)),),
        )
        return {r[0] for r in rows}

    def used_bytes(self) -> int:
        """Bytes of the file in use (freed pages are reused by SQLite, so this is what grows)."""
        pages = self._query_one("PRAGMA page_count", ())
        free = self._query_one("PRAGMA freelist_count", ())
        size = self._query_one("PRAGMA page_size", ())
        assert pages is not None and free is not None and size is not None
        return (int(pages[0]) - int(free[0])) * int(size[0])

    def protected(self) -> dict[str, int]:
        """Per agent, the lowest sequence an open alert references (pruning stops below it)."""
        # Open means what the store's triage says (collector/store/triage.py); a store that no
        # collector has upgraded yet has no status column, only what alert bodies said.
        if self._query_one("SELECT 1 FROM pragma_table_info('alerts') WHERE name = 'status'", ()):
            rows = self._query(_PROTECTED, (triage.OPEN,))
        else:
            rows = self._query(_PROTECTED_V1, (json.dumps(triage.CLOSED_STATUSES),))
        return {r[0]: int(r[1]) for r in rows}

    def first_sequence_since(self, agent_id: str, cutoff: str) -> int | None:
        """The lowest stored sequence of the agent whose time is at or after `cutoff`."""
        row = self._query_one(
            "SELECT MIN(sequence) FROM events WHERE agent_id = ? AND ts >= ?", (agent_id, cutoff)
        )
        return None if row is None or row[0] is None else int(row[0])

    def time_at_offset(self, offset: int) -> str | None:
        """The time of the `offset`-th oldest stored event (for size-based retention)."""
        row = self._query_one("SELECT ts FROM events ORDER BY ts LIMIT 1 OFFSET ?", (max(0, offset),))
        return None if row is None else str(row[0])

    def count(self) -> int:
        """Stored events."""
        row = self._query_one("SELECT COUNT(*) FROM events", ())
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ pruning

    def prune_through(self, agent_id: str, sequence: int) -> Checkpoint:
        """Delete the agent's events through `sequence` and record the checkpoint, in one transaction."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_CHECKPOINTS)
            row = db.execute("SELECT watermark FROM chains WHERE agent_id = ?", (agent_id,)).fetchone()
            if row is None or sequence >= int(row[0]):
                # The head stays: ingest continues the chain from it.
                raise PruneRefused(
                    self.location,
                    f"agent {agent_id}: cannot prune through {sequence}, the chain head stays"
                )
            value = db.execute(
                "SELECT chain FROM events WHERE agent_id = ? AND sequence = ?", (agent_id, sequence)
            ).fetchone()
            if value is None or value[0] is None:
                raise PruneRefused(
                    self.location, f"agent {agent_id}: no chained event at sequence {sequence}"
                )
            deleted = db.execute(
                "DELETE FROM events WHERE agent_id = ? AND sequence <= ?", (agent_id, sequence)
            ).rowcount
            now = ecs_now()
            db.execute(
                "INSERT INTO evidence_checkpoints (agent_id, sequence, chain, pruned_at, pruned_total)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET sequence = excluded.sequence,"
                " chain = excluded.chain, pruned_at = excluded.pruned_at,"
                " pruned_total = pruned_total + excluded.pruned_total",
                (agent_id, sequence, bytes(value[0]), now, deleted),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise LedgerError(self.location, f"prune failed: {exc}") from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._has_checkpoints = True
        cp = self.checkpoint(agent_id)
        assert cp is not None
        return cp

    # ------------------------------------------------------------------ helpers

    def _query_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        try:
            return self._db.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise LedgerError(self.location, f"query failed: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(self.location, f"query failed: {exc}") from exc

    def _iterate(self, sql: str, params: tuple[Any, ...]) -> Iterator[Any]:
        try:
            yield from self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise LedgerError(self.location, f"query failed: {exc}") from exc
