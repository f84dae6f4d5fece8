"""Where the SQLite store keeps chain values (schema 11): one row per sealing step of an agent.

A step chains a run of an agent's consecutive sequences, and their chain values go in one row,
`links`, the 32-byte values one after another (`first`..`last`). Before, each value was written
into its event's row by an UPDATE: every page of events the step covered was written again (to
the WAL, then by the checkpoint), and the update was a quarter of the sealer's work. Rows chained
by a store older than schema 11 keep their value in `events.chain`, which readers take first.

PostgreSQL keeps one row per event in `chain_values` (collector/store/postgres.py): COPY makes
those cheap, and its layout is older than this one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

VALUE_BYTES = 32

SCHEMA_11 = (
    "CREATE TABLE IF NOT EXISTS chain_blocks (agent_id TEXT NOT NULL, first INTEGER NOT NULL,"
    " last INTEGER NOT NULL, links BLOB NOT NULL, PRIMARY KEY (agent_id, first))"
)
# A block is only written after the compare-and-set on chains.sealed, so a block already starting
# there (a step undone by a power cut after the block made it to disk; sealer commits do not fsync)
# holds what the chain computes now.
INSERT = "INSERT OR REPLACE INTO chain_blocks (agent_id, first, last, links) VALUES (?, ?, ?, ?)"
_COVERING = (
    "SELECT first, links FROM chain_blocks WHERE agent_id = ? AND first <= ? ORDER BY first DESC LIMIT 1"
)
# Pruning a prefix: blocks that end inside it go; one that straddles the cut stays whole (the
# values of pruned events in it are never read: readers look values up for stored events only).
DELETE_THROUGH = "DELETE FROM chain_blocks WHERE agent_id = ? AND last <= ?"


def block_row(agent_id: str, first: int, values: list[tuple[bytes, Any]]) -> tuple[str, int, int, bytes]:
    """The chain_blocks row of values (as `sql.link_rows` returns them) chained from `first` on."""
    return agent_id, first, first + len(values) - 1, b"".join([value for value, _ in values])


def value_at(db: sqlite3.Connection, agent_id: str, sequence: int) -> bytes | None:
    """The chain value of one sequence from its block, None when no block covers it."""
    return BlockReader(db).value(agent_id, sequence)


class BlockReader:
    """Chain values of rows read in (agent, sequence) order: one query per block, not per row."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._agent: str | None = None
        self._first = 0
        self._last = -1
        self._links = b""

    def value(self, agent_id: str, sequence: int) -> bytes | None:
        """The chain value of `sequence`, None when no block covers it."""
        if agent_id != self._agent or not self._first <= sequence <= self._last:
            row = self._db.execute(_COVERING, (agent_id, sequence)).fetchone()
            if row is None:
                return None
            self._agent, self._first, self._links = agent_id, int(row[0]), bytes(row[1])
            self._last = self._first + len(self._links) // VALUE_BYTES - 1
            if sequence > self._last:
                return None
        offset = (sequence - self._first) * VALUE_BYTES
        return self._links[offset : offset + VALUE_BYTES]
