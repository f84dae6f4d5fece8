"""The evidence side of a store: chain values by sequence, checkpoints, pruning, alert evidence.

`collector/store` owns the events table and computes the chain; a ledger only reads chain
values back (the `prev` of a filtered export's records), looks up which events alerts
reference, and prunes a prefix of an agent's chain while recording a checkpoint (agent, last
pruned sequence, chain value there) in the same transaction, so the chain stays verifiable
from the checkpoint on. A ledger works on its store's connection (`store.ledger()`), so the
two never hold two connections to one database. `SqlLedger` holds the queries both stores
share; `SqliteLedger` (ledger_sqlite.py) and `PostgresLedger` (ledger_postgres.py) what differs.
`open_ledger` opens the store the config's `store` value names and its ledger together.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.store.base import StoreError, StoreUnavailable
from collector.store.sql import SqlStore
from protos import chain


class LedgerError(StoreError):
    """The store cannot be read or written for evidence purposes (`location`, `reason`)."""


class PruneRefused(LedgerError):
    """`prune_through` was asked to cut at or past the chain head, or where no chained event is."""


@dataclass(frozen=True)
class Checkpoint:
    """Where an agent's stored chain now starts: everything through `sequence` was pruned."""

    agent_id: str
    sequence: int
    chain: bytes
    pruned_at: str
    pruned_total: int

    def to_dict(self) -> dict[str, Any]:
        """The manifest / CLI form."""
        return {
            "sequence": self.sequence,
            "chain": self.chain.hex(),
            "pruned_at": self.pruned_at,
            "pruned_total": self.pruned_total,
        }


@dataclass(frozen=True)
class AgentChain:
    """An agent's stored chain: its checkpoint (0 if never pruned) and how far it is sealed.

    `sealed` is the last sequence the hash chain covers (the `chains.sealed` column); it is
    not `Store.watermark`, the end of the contiguous stored prefix that the collector acks.
    """

    agent_id: str
    checkpoint: int
    sealed: int


class Ledger(abc.ABC):
    """Evidence queries and pruning on one store."""

    location: str

    @abc.abstractmethod
    def close(self) -> None:
        """Release the ledger (and the store it was opened with, from `open_ledger`)."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def chain_value(self, agent_id: str, sequence: int) -> bytes | None:
        """The chain value at `sequence` (genesis at 0, the checkpoint's once pruned), None if unknown."""
        if sequence <= 0:
            return chain.GENESIS
        value = self._stored_chain(agent_id, sequence)
        if value is not None:
            return value
        cp = self.checkpoint(agent_id)
        if cp is not None and cp.sequence == sequence:
            return cp.chain
        return None

    def chains(self) -> list[AgentChain]:
        """Every agent with stored events: checkpoint sequence and last sealed sequence."""
        cps = self.checkpoints()
        return [
            AgentChain(agent_id, cps[agent_id].sequence if agent_id in cps else 0, sealed)
            for agent_id, sealed in self._sealed()
        ]

    @abc.abstractmethod
    def _stored_chain(self, agent_id: str, sequence: int) -> bytes | None:
        """The chain value stored with an event, None if the event is absent or not chained."""

    @abc.abstractmethod
    def _sealed(self) -> list[tuple[str, int]]:
        """(agent id, last sealed sequence) of every agent, ordered by agent id."""

    @abc.abstractmethod
    def checkpoint(self, agent_id: str) -> Checkpoint | None:
        """The agent's checkpoint, if it was ever pruned."""

    @abc.abstractmethod
    def checkpoints(self) -> dict[str, Checkpoint]:
        """Every agent's checkpoint."""

    @abc.abstractmethod
    def alert_evidence(self, alert_ids: Iterable[str] = (), policies: Iterable[str] = ()) -> set[str]:
        """Event ids referenced by the given alerts and by every alert of the given policies."""

    @abc.abstractmethod
    def alerts_exist(self, alert_ids: Iterable[str]) -> set[str]:
        """Which of these alert ids are stored."""

    @abc.abstractmethod
    def used_bytes(self) -> int:
        """Bytes the store uses for what it holds (what size-based retention compares)."""

    @abc.abstractmethod
    def protected(self) -> dict[str, int]:
        """Per agent, the lowest sequence an open alert references (pruning stops below it)."""

    @abc.abstractmethod
    def first_sequence_since(self, agent_id: str, cutoff: str) -> int | None:
        """The lowest stored sequence of the agent whose time is at or after `cutoff`."""

    @abc.abstractmethod
    def time_at_offset(self, offset: int) -> str | None:
        """The time of the `offset`-th oldest stored event (for size-based retention)."""

    @abc.abstractmethod
    def count(self) -> int:
        """Stored events."""

    # ------------------------------------------------------------------ pruning

    @abc.abstractmethod
    def prune_through(self, agent_id: str, sequence: int) -> Checkpoint:
        """Delete the agent's events through `sequence` and record the checkpoint, in one transaction.

        Raises PruneRefused if `sequence` is at or above the chain head (ingest continues
        the chain from it) or is not a chained event.
        """


class SqlLedger(Ledger):
    """The ledger queries both SQL stores share, run on the store's own connection and lock."""

    _CHECKPOINT = "SELECT agent_id, sequence, chain, pruned_at, pruned_total FROM evidence_checkpoints"

    def __init__(self, store: SqlStore, *, owns_store: bool = False) -> None:
        self.location = store.location
        self._store = store
        self._owns_store = owns_store

    def close(self) -> None:
        """Close the store if this ledger opened it (`open_ledger`)."""
        if self._owns_store:
            self._store.close()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._store._all(self._store.dialect.sql(sql), params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # Qualified on the right: PostgreSQL needs it, SQLite reads it as the stored row too.
    _RECORD_CHECKPOINT = (
        "INSERT INTO evidence_checkpoints (agent_id, sequence, chain, pruned_at, pruned_total)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET sequence = excluded.sequence,"
        " chain = excluded.chain, pruned_at = excluded.pruned_at,"
        " pruned_total = evidence_checkpoints.pruned_total + excluded.pruned_total"
    )

    def _prunable(self, agent_id: str, sequence: int, sealed: Any, value: Any) -> bytes:
        """The chain value to checkpoint at `sequence`, given the rows of the agent's sealed head
        and of the value there; PruneRefused when the head would go or nothing is chained there."""
        if sealed is None or sequence >= int(sealed[0]):
            # The head stays: ingest continues the chain from it.
            raise PruneRefused(
                self.location, f"agent {agent_id}: cannot prune through {sequence}, the chain head stays"
            )
        if value is None or value[0] is None:
            raise PruneRefused(self.location, f"agent {agent_id}: no chained event at sequence {sequence}")
        return bytes(value[0])

    def _has_checkpoints(self) -> bool:
        """Whether the checkpoints table exists (a SQLite store makes it on first prune)."""
        return True

    def checkpoint(self, agent_id: str) -> Checkpoint | None:
        """The agent's checkpoint, if it was ever pruned."""
        if not self._has_checkpoints():
            return None
        row = self._one(self._CHECKPOINT + " WHERE agent_id = ?", (agent_id,))
        return None if row is None else _checkpoint(row)

    def checkpoints(self) -> dict[str, Checkpoint]:
        """Every agent's checkpoint."""
        if not self._has_checkpoints():
            return {}
        return {str(r[0]): _checkpoint(r) for r in self._all(self._CHECKPOINT)}

    def _sealed(self) -> list[tuple[str, int]]:
        sql = f"SELECT agent_id, {self._store.sealed_column} FROM chains ORDER BY agent_id"  # noqa: S608 (fixed)
        rows = self._all(sql)
        return [(str(r[0]), int(r[1])) for r in rows]

    def alert_evidence(self, alert_ids: Iterable[str] = (), policies: Iterable[str] = ()) -> set[str]:
        """Event ids referenced by the given alerts and by every alert of the given policies."""
        ids, pols = list(alert_ids), list(policies)
        found: set[str] = set()
        if not ids and not pols:
            return found
        d = self._store.dialect
        sql = f"SELECT body FROM alerts WHERE id{d.in_list} OR policy_id{d.in_list}"  # noqa: S608 (fixed)
        for (body,) in self._all(sql, (d.list_param(ids), d.list_param(pols))):
            evidence = json.loads(body).get("evidence", [])
            if isinstance(evidence, list):
                found.update(str(e) for e in evidence)
        return found

    def alerts_exist(self, alert_ids: Iterable[str]) -> set[str]:
        """Which of these alert ids are stored."""
        d = self._store.dialect
        sql = f"SELECT id FROM alerts WHERE id{d.in_list}"  # noqa: S608 (a fixed fragment of the dialect)
        rows = self._all(sql, (d.list_param(list(alert_ids)),))
        return {str(r[0]) for r in rows}

    def first_sequence_since(self, agent_id: str, cutoff: str) -> int | None:
        """The lowest stored sequence of the agent whose time is at or after `cutoff`."""
        row = self._one("SELECT MIN(sequence) FROM events WHERE agent_id = ? AND ts >= ?", (agent_id, cutoff))
        return None if row is None or row[0] is None else int(row[0])

    def time_at_offset(self, offset: int) -> str | None:
        """The time of the `offset`-th oldest stored event (for size-based retention)."""
        row = self._one("SELECT ts FROM events ORDER BY ts LIMIT 1 OFFSET ?", (max(0, offset),))
        return None if row is None else str(row[0])

    def count(self) -> int:
        """Stored events."""
        row = self._one("SELECT COUNT(*) FROM events")
        return 0 if row is None else int(row[0])


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    return Checkpoint(str(row[0]), int(row[1]), bytes(row[2]), str(row[3]), int(row[4]))


def open_ledger(location: str, *, readonly: bool = True) -> Ledger:
    """The store the config's `store` key names (a path: SQLite; postgresql://…) with its ledger."""
    from collector.store import open_store

    postgres = location.startswith(("postgresql://", "postgres://"))
    if not postgres and not Path(location).exists():  # a writable store would be created
        raise StoreUnavailable(location, "no such store (has the collector run yet?)")
    return open_store(location, readonly=readonly).ledger(owns_store=True)
