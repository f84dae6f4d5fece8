"""The ledger of the SQLite store (see collector/store/ledger.py), on the store's connection.

Tables it adds (created on first prune): `evidence_checkpoints`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from collector.store import chainblocks, triage
from collector.store.ledger import Checkpoint, LedgerError, SqlLedger
from common.ecstime import ecs_now

if TYPE_CHECKING:
    from collector.store.sqlite import SqliteStore

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


class SqliteLedger(SqlLedger):
    """Evidence queries and pruning on the store's SQLite file."""

    def __init__(self, store: SqliteStore, *, owns_store: bool = False) -> None:
        super().__init__(store, owns_store=owns_store)
        self._sqlite = store
        self._checkpoints_exist = bool(
            self._one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evidence_checkpoints'")
        )

    def _has_checkpoints(self) -> bool:
        return self._checkpoints_exist

    def _stored_chain(self, agent_id: str, sequence: int) -> bytes | None:
        store = self._sqlite
        with store._lock:
            try:
                return _chain_value(store._db, agent_id, sequence, blocks=store._version >= 11)
            except sqlite3.Error as exc:
                raise LedgerError(self.location, f"reading a chain value failed: {exc}") from exc

    def used_bytes(self) -> int:
        """Bytes of the file in use (freed pages are reused by SQLite, so this is what grows)."""
        pages = self._one("PRAGMA page_count")
        free = self._one("PRAGMA freelist_count")
        size = self._one("PRAGMA page_size")
        assert pages is not None and free is not None and size is not None
        return (int(pages[0]) - int(free[0])) * int(size[0])

    def protected(self) -> dict[str, int]:
        """Per agent, the lowest sequence an open alert references (pruning stops below it)."""
        # Open means what the store's triage says (collector/store/triage.py); a store that no
        # collector has upgraded yet has no status column, only what alert bodies said.
        if self._one("SELECT 1 FROM pragma_table_info('alerts') WHERE name = 'status'"):
            rows = self._all(_PROTECTED, (triage.OPEN,))
        else:
            rows = self._all(_PROTECTED_V1, (json.dumps(triage.CLOSED_STATUSES),))
        return {r[0]: int(r[1]) for r in rows}

    def prune_through(self, agent_id: str, sequence: int) -> Checkpoint:
        """Delete the agent's events through `sequence` and record the checkpoint, in one transaction."""
        store = self._sqlite
        store._writable()
        with store._lock, store._transaction("prune", error=LedgerError) as db:
            db.execute(_CHECKPOINTS)
            sealed = db.execute("SELECT sealed FROM chains WHERE agent_id = ?", (agent_id,)).fetchone()
            value = _chain_value(db, agent_id, sequence, blocks=True)
            chain_value = self._prunable(agent_id, sequence, sealed, None if value is None else (value,))
            deleted = db.execute(
                "DELETE FROM events WHERE agent_id = ? AND sequence <= ?", (agent_id, sequence)
            ).rowcount
            db.execute(chainblocks.DELETE_THROUGH, (agent_id, sequence))
            db.execute(self._RECORD_CHECKPOINT, (agent_id, sequence, chain_value, ecs_now(), deleted))
        self._checkpoints_exist = True
        cp = self.checkpoint(agent_id)
        assert cp is not None
        return cp


def _chain_value(db: sqlite3.Connection, agent_id: str, sequence: int, *, blocks: bool) -> bytes | None:
    """The chain value of a stored event: in its row (chained before schema 11) or its block; None
    when the event is not stored or not chained."""
    sql = "SELECT chain FROM events WHERE agent_id = ? AND sequence = ?"
    row = db.execute(sql, (agent_id, sequence)).fetchone()
    if row is None:
        return None
    if row[0] is not None:
        return bytes(row[0])
    return chainblocks.value_at(db, agent_id, sequence) if blocks else None
