"""The ledger of the PostgreSQL store (see collector/store/ledger.py), with its own connection.

The store creates `evidence_checkpoints` with its schema. Pruning locks the agent's `chains`
row first, as ingest and sealing do, so it never races a collector writing the same agent.

Size (`used_bytes`) is the bytes of the live rows of events, chain values and alerts (`pg_column_size`),
not the table files: PostgreSQL keeps deleted rows' space until (auto)vacuum makes it
reusable, so file sizes would not drop after a prune and size-based retention could not tell
when to stop. Measuring it reads every row once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg

from collector.store import pgconnect, triage
from collector.store.base import StoreError
from collector.store.ledger import Checkpoint, Ledger, LedgerError, PruneRefused
from common.ecstime import ecs_now

_CHECKPOINTS = "SELECT agent_id, sequence, chain, pruned_at, pruned_total FROM evidence_checkpoints"

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


def _checkpoint(row: tuple[Any, ...]) -> Checkpoint:
    return Checkpoint(str(row[0]), int(row[1]), bytes(row[2]), str(row[3]), int(row[4]))


class PostgresLedger(Ledger):
    """Evidence queries and pruning on the store's PostgreSQL database."""

    def __init__(self, url: str, *, readonly: bool = True) -> None:
        self.location = pgconnect.describe(url)
        self._url = url
        try:
            self._db = pgconnect.connect(url, readonly=readonly, application="exfilguard-evidence")
        except StoreError as exc:
            raise LedgerError(exc.location, exc.message) from None
        try:
            found = self._db.execute("SELECT to_regclass('exfilguard_schema')").fetchone()
        except psycopg.Error as exc:
            self._db.close()
            raise self._error("cannot read", exc) from None
        if found is None or found[0] is None:
            self._db.close()
            raise LedgerError(
                self.location, "not an ExfilGuard store (no schema; has the collector run yet?)"
            )

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _error(self, what: str, exc: psycopg.Error) -> LedgerError:
        return LedgerError(self.location, f"{what}: {' '.join(pgconnect.scrub(str(exc), self._url).split())}")

    # ------------------------------------------------------------------ reading

    def _stored_chain(self, agent_id: str, sequence: int) -> bytes | None:
        row = self._one(
            "SELECT value FROM chain_values WHERE agent_id = %s AND sequence = %s", (agent_id, sequence)
        )
        return None if row is None or row[0] is None else bytes(row[0])

    def checkpoint(self, agent_id: str) -> Checkpoint | None:
        """The agent's checkpoint, if it was ever pruned."""
        row = self._one(_CHECKPOINTS + " WHERE agent_id = %s", (agent_id,))
        return None if row is None else _checkpoint(row)

    def checkpoints(self) -> dict[str, Checkpoint]:
        """Every agent's checkpoint."""
        rows = self._all(_CHECKPOINTS, ())
        return {str(r[0]): _checkpoint(r) for r in rows}

    def _sealed(self) -> list[tuple[str, int]]:
        rows = self._all("SELECT agent_id, watermark FROM chains ORDER BY agent_id", ())
        return [(str(r[0]), int(r[1])) for r in rows]

    def alert_evidence(self, alert_ids: Iterable[str] = (), policies: Iterable[str] = ()) -> set[str]:
        """Event ids referenced by the given alerts and by every alert of the given policies."""
        ids, pols = list(alert_ids), list(policies)
        found: set[str] = set()
        if not ids and not pols:
            return found
        rows = self._all(
            "SELECT body FROM alerts WHERE id = ANY(%s::text[]) OR policy_id = ANY(%s::text[])", (ids, pols)
        )
        for (body,) in rows:
            evidence = json.loads(body).get("evidence", [])
            if isinstance(evidence, list):
                found.update(str(e) for e in evidence)
        return found

    def alerts_exist(self, alert_ids: Iterable[str]) -> set[str]:
        """Which of these alert ids are stored."""
        rows = self._all("SELECT id FROM alerts WHERE id = ANY(%s::text[])", (list(alert_ids),))
        return {str(r[0]) for r in rows}

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

    def first_sequence_since(self, agent_id: str, cutoff: str) -> int | None:
        """The lowest stored sequence of the agent whose time is at or after `cutoff`."""
        row = self._one(
            "SELECT MIN(sequence) FROM events WHERE agent_id = %s AND ts >= %s", (agent_id, cutoff)
        )
        return None if row is None or row[0] is None else int(row[0])

    def time_at_offset(self, offset: int) -> str | None:
        """The time of the `offset`-th oldest stored event (for size-based retention)."""
        row = self._one("SELECT ts FROM events ORDER BY ts LIMIT 1 OFFSET %s", (max(0, offset),))
        return None if row is None else str(row[0])

    def count(self) -> int:
        """Stored events."""
        row = self._one("SELECT COUNT(*) FROM events", ())
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ pruning

    def prune_through(self, agent_id: str, sequence: int) -> Checkpoint:
        """Delete the agent's events through `sequence` and record the checkpoint, in one transaction."""
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute("SELECT watermark FROM chains WHERE agent_id = %s FOR UPDATE", (agent_id,))
                row = cur.fetchone()
                if row is None or sequence >= int(row[0]):
                    # The head stays: ingest continues the chain from it.
                    raise PruneRefused(
                        self.location,
                        f"agent {agent_id}: cannot prune through {sequence}, the chain head stays"
                    )
                cur.execute(
                    "SELECT value FROM chain_values WHERE agent_id = %s AND sequence = %s",
                    (agent_id, sequence),
                )
                value = cur.fetchone()
                if value is None or value[0] is None:
                    raise PruneRefused(
                        self.location, f"agent {agent_id}: no chained event at sequence {sequence}"
                    )
                cur.execute("DELETE FROM events WHERE agent_id = %s AND sequence <= %s", (agent_id, sequence))
                deleted = cur.rowcount
                cur.execute(
                    "DELETE FROM chain_values WHERE agent_id = %s AND sequence <= %s", (agent_id, sequence)
                )
                now = ecs_now()
                cur.execute(
                    "INSERT INTO evidence_checkpoints (agent_id, sequence, chain, pruned_at, pruned_total)"
                    " VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (agent_id) DO UPDATE SET sequence = excluded.sequence,"
                    " chain = excluded.chain, pruned_at = excluded.pruned_at,"
                    " pruned_total = evidence_checkpoints.pruned_total + excluded.pruned_total",
                    (agent_id, sequence, bytes(value[0]), now, deleted),
                )
        except psycopg.Error as exc:
            raise self._error("prune failed", exc) from None
        cp = self.checkpoint(agent_id)
        assert cp is not None
        return cp

    # ------------------------------------------------------------------ helpers

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise self._error("query failed", exc) from None
