"""Where each forwarding destination is in the event stream: one cursor per (destination, agent).

    book = CursorBook(reader=readonly_store.domain(), writer=store.domain())
    done = book.load("elastic")                    # {agent id: last forwarded sequence}
    heads = book.heads()                           # {agent id: its stored prefix (what was acked)}
    rows = book.batch([("agent-1", 41, 90), ("agent-2", 0, 7)], 250, 500)   # [(agent, sequence, bytes)]
    book.save("elastic", {"agent-1": 90})          # after the destination took them

Events are read per agent in sequence order up to the agent's stored prefix (`chains.stored`: every
sequence up to it is stored; what the collector acknowledged), so a cursor never passes a hole
a resend will still fill. Reads go through
the reader's connection (its own lock: forwarding never waits on ingest's), cursor writes
through the writer's. Same SQL on SQLite and PostgreSQL (domain.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from collector.store.domain import DomainSql

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS forward_cursors (destination TEXT NOT NULL, agent_id TEXT NOT NULL,"
    " sequence BIGINT NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (destination, agent_id))",
)


class CursorBook:
    """The forwarding cursors of every destination, and the stored events after them."""

    def __init__(self, reader: DomainSql, writer: DomainSql) -> None:
        self.reader = reader
        self.writer = writer

    def load(self, destination: str) -> dict[str, int]:
        """The destination's cursors: agent id -> last sequence it took (absent: none yet)."""
        made = self.writer.ensure("forward_cursors", _SCHEMA)  # False: a read-only store (the admin CLI)
        with self.writer.transaction() as tx:
            if not made and not tx.has_table("forward_cursors"):
                return {}
            rows = tx.query(
                "SELECT agent_id, sequence FROM forward_cursors WHERE destination = ?", (destination,)
            )
        return {str(agent): int(seq) for agent, seq in rows}

    def save(self, destination: str, cursors: Mapping[str, int], updated: str) -> None:
        """Move the destination's cursors (one transaction); a cursor never moves back."""
        if not cursors or not self.writer.ensure("forward_cursors", _SCHEMA):
            return
        rows = [(destination, agent, seq, updated) for agent, seq in sorted(cursors.items())]
        with self.writer.transaction() as tx:
            tx.many(
                "INSERT INTO forward_cursors (destination, agent_id, sequence, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (destination, agent_id) DO UPDATE SET sequence = excluded.sequence,"
                " updated = excluded.updated WHERE excluded.sequence > forward_cursors.sequence",
                rows,
            )

    def heads(self) -> dict[str, int]:
        """Every agent's stored prefix: the highest sequence up to which all its events are stored."""
        with self.reader.transaction() as tx:
            rows = tx.query("SELECT agent_id, stored FROM chains")
        return {str(agent): int(stored) for agent, stored in rows}

    def batch(
        self, ranges: Sequence[tuple[str, int, int]], share: int, limit: int
    ) -> list[tuple[str, int, bytes]]:
        """Stored events of several agents, read in one transaction: for each (agent id, after, upto)
        in turn its events after `after` up to `upto` in sequence order, at most `share` of each and
        `limit` in all, as (agent id, sequence, stored bytes)."""
        rows: list[tuple[str, int, bytes]] = []
        with self.reader.transaction() as tx:
            for agent_id, after, upto in ranges:
                room = limit - len(rows)
                if room <= 0:
                    break
                found = tx.query(
                    "SELECT sequence, data FROM events WHERE agent_id = ? AND sequence > ? AND sequence <= ?"
                    " ORDER BY sequence LIMIT ?",
                    (agent_id, after, upto, min(room, share)),
                )
                rows += [(agent_id, int(seq), bytes(data)) for seq, data in found]
        return rows
