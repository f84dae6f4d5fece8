"""The evidence side of a store: chain values by sequence, checkpoints, pruning, alert evidence.

`collector/store` owns the events table and computes the chain; a ledger only reads chain
values back (the `prev` of a filtered export's records), looks up which events alerts
reference, and prunes a prefix of an agent's chain while recording a checkpoint (agent, last
pruned sequence, chain value there) in the same transaction, so the chain stays verifiable
from the checkpoint on. Each store kind has its own ledger with its own connection:
`SqliteLedger` (ledger_sqlite.py) and `PostgresLedger` (ledger_postgres.py); `open_ledger`
picks by the config's `store` value, as `collector.store.open_store` does.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector.store.base import StoreError
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

    `sealed` is the last sequence the hash chain covers (the `chains.watermark` column); it is
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
        """Close the connection."""

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


def open_ledger(location: str, *, readonly: bool = True) -> Ledger:
    """The ledger of the store the config's `store` key names (a path: SQLite; postgresql://…)."""
    if location.startswith(("postgresql://", "postgres://")):
        from collector.store.ledger_postgres import PostgresLedger  # psycopg loads only when used

        return PostgresLedger(location, readonly=readonly)
    from collector.store.ledger_sqlite import SqliteLedger

    return SqliteLedger(location, readonly=readonly)
