"""The ledger of the PostgreSQL store (see collector/store/ledger.py), on the store's connection.

The store creates `evidence_checkpoints` with its schema. Pruning locks the agent's `chains`
row first, as ingest and sealing do, so it never races a collector writing the same agent.

Size (`used_bytes`) is the bytes of the live rows of events, chain values and alerts (`pg_column_size`),
not the table files: PostgreSQL keeps deleted rows' space until (auto)vacuum makes it
reusable, so file sizes would not drop after a prune and size-based retention could not tell
when to stop. Measuring it reads every row once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from collector.store import triage
from collector.store.ledger import Checkpoint, SqlLedger
from common.ecstime import ecs_now

if TYPE_CHECKING:
    from collector.store.postgres import PostgresStore

_PROTECTED = (
    "SELECT agent_id, MIN(sequence) FROM events WHERE event_id IN"
    " (SELECT jsonb_array_elements_text(b -> 'evidence') FROM"
    "  (SELECT body::jsonb AS b FROM alerts WHERE status = %s) AS open_alerts"
    "  WHERE jsonb_typeof(b -> 'evidence') = 'array')"
    " GROUP BY agent_id"
)
_PROTECTED_V1 = (
    "SELECT agent_id, MIN(sequence) FROM events WHERE event_id IN"
    " (SELECT jsonb_array_elements_text(b -> 'evidence') FROM"
    "  (SELECT body::jsonb AS b FROM alerts) AS open_alerts"
    "  WHERE jsonb_typeof(b -> 'evidence') = 'array'"
    "  AND NOT (COALESCE(b ->> 'status', 'open') = ANY(%s::text[])))"
    " GROUP BY agent_id"
)


class PostgresLedger(SqlLedger):
    """Evidence queries and pruning on the store's PostgreSQL database."""

    def __init__(self, store: PostgresStore, *, owns_store: bool = False) -> None:
        super().__init__(store, owns_store=owns_store)
        self._postgres = store

    def _stored_chain(self, agent_id: str, sequence: int) -> bytes | None:
        row = self._one(
            "SELECT value FROM chain_values WHERE agent_id = ? AND sequence = ?", (agent_id, sequence)
        )
        return None if row is None or row[0] is None else bytes(row[0])

    def used_bytes(self) -> int:
        """Bytes of the live rows of events and alerts (see the module docstring)."""
        row = self._one(
            "SELECT (SELECT COALESCE(SUM(pg_column_size(e.*)), 0) FROM events e)"
            " + (SELECT COALESCE(SUM(pg_column_size(c.*)), 0) FROM chain_values c)"
            " + (SELECT COALESCE(SUM(pg_column_size(a.*)), 0) FROM alerts a)",
            (),
        )
        return 0 if row is None else int(row[0])

    def protected(self) -> dict[str, int]:
        """Per agent, the lowest sequence an open alert references (pruning stops below it)."""
        # Open means what the store's triage says (collector/store/triage.py); a store that no
        # collector has upgraded yet has no status column, only what alert bodies said.
        has_status = self._one(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = 'alerts' AND column_name = 'status'",
            (),
        )
        if has_status:
            rows = self._all(_PROTECTED, (triage.OPEN,))
        else:
            rows = self._all(_PROTECTED_V1, (list(triage.CLOSED_STATUSES),))
        return {str(r[0]): int(r[1]) for r in rows}

    def prune_through(self, agent_id: str, sequence: int) -> Checkpoint:
        """Delete the agent's events through `sequence` and record the checkpoint, in one transaction."""
        store = self._postgres
        store._writable()
        with store._lock:
            try:
                db = store._connection()
                with db.transaction(), db.cursor() as cur:
                    cur.execute("SELECT sealed FROM chains WHERE agent_id = %s FOR UPDATE", (agent_id,))
                    sealed = cur.fetchone()
                    cur.execute(
                        "SELECT value FROM chain_values WHERE agent_id = %s AND sequence = %s",
                        (agent_id, sequence),
                    )
                    chain_value = self._prunable(agent_id, sequence, sealed, cur.fetchone())
                    through = (agent_id, sequence)
                    cur.execute("DELETE FROM events WHERE agent_id = %s AND sequence <= %s", through)
                    deleted = cur.rowcount
                    cur.execute("DELETE FROM chain_values WHERE agent_id = %s AND sequence <= %s", through)
                    cur.execute(
                        self._store.dialect.sql(self._RECORD_CHECKPOINT),
                        (agent_id, sequence, chain_value, ecs_now(), deleted),
                    )
            except psycopg.Error as exc:
                raise store._fail("prune", exc) from None
        cp = self.checkpoint(agent_id)
        assert cp is not None
        return cp
