"""How the SQLite store's sealing step shares the write lock with ingest (the sealer process's side)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from collector.store.sqlite import SqliteStore
from protos import chain
from tests.helpers import make_events


def test_one_step_gives_each_agent_behind_an_even_share_and_commits_them_together(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.ingest_batches([("a", make_events("a", 1, 10)), ("b", make_events("b", 1, 10))], seal=False)
    assert store.seal(limit=10) == 10
    assert (store.chain_head("a")[0], store.chain_head("b")[0]) == (5, 5)
    assert store.seal() == 10
    for agent in ("a", "b"):
        prev = chain.GENESIS
        for mapping in store.events():
            if mapping["agent.id"] == agent:
                prev = chain.link(prev, mapping)
                assert mapping["exfilguard.chain.hash"] == prev.hex()
        assert store.chain_head(agent) == (10, prev)
    store.close()


def test_a_step_waits_for_another_connections_write_and_then_commits(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.ingest_batches([("a", make_events("a", 1, 20))], seal=False)
    writer = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # the collector's ingest commit, in another process
    holder = threading.Timer(0.3, writer.execute, ("COMMIT",))
    started = time.monotonic()
    holder.start()
    try:
        assert store.seal() == 20  # SQLITE_BUSY while the other write lasts: tried again, not raised
    finally:
        holder.join()
        writer.close()
    assert time.monotonic() - started >= 0.3
    assert store.chain_head("a")[0] == 20
    assert store.unsealed() == 0
    store.close()


def _links(store: SqliteStore) -> list[str]:
    """Each stored event's chain value as events() gives it, checked against the chain recomputed."""
    prev, out = chain.GENESIS, []
    for mapping in store.events():
        prev = chain.link(prev, mapping)
        assert mapping.get("exfilguard.chain.hash") == prev.hex(), mapping["event.sequence"]
        out.append(prev.hex())
    return out


def test_a_step_writes_one_block_of_values_and_rows_chained_before_schema_11_keep_theirs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    store.ingest("a", make_events("a", 1, 6))
    with sqlite3.connect(path) as db:
        blocks = db.execute("SELECT first, last, length(links) FROM chain_blocks").fetchall()
        assert blocks == [(1, 6, 6 * 32)]
        assert db.execute("SELECT COUNT(*) FROM events WHERE chain IS NOT NULL").fetchone() == (0,)
        # What a store of schema 10 holds: each value in its event's row, no blocks.
        db.execute(
            "UPDATE events SET chain = (SELECT substr(b.links, (events.sequence - b.first) * 32 + 1, 32)"
            " FROM chain_blocks b WHERE b.agent_id = events.agent_id AND b.first <= events.sequence"
            " AND b.last >= events.sequence)"
        )
        db.execute("DROP TABLE chain_blocks")
        db.execute("PRAGMA user_version = 10")
    store.close()
    reader = SqliteStore(path, readonly=True)  # not upgraded: values read from the rows alone
    old = _links(reader)
    assert len(old) == 6
    reader.close()
    upgraded = SqliteStore(path)
    upgraded.ingest_batches([("a", make_events("a", 7, 12))], seal=False)
    assert upgraded.seal(limit=4) == 4 and upgraded.seal() == 2  # two steps: two blocks
    values = _links(upgraded)
    assert values[:6] == old and len(values) == 12
    with upgraded.ledger() as ledger:
        for sequence in (3, 8, 12):  # in its row, in the first and in the last block
            assert ledger.chain_value("a", sequence) == bytes.fromhex(values[sequence - 1])
        assert ledger.chain_value("a", 13) is None
        checkpoint = ledger.prune_through("a", 9)  # inside the first block of schema 11
        assert checkpoint.chain == bytes.fromhex(values[8])
        assert ledger.chain_value("a", 10) == bytes.fromhex(values[9])
    with sqlite3.connect(path) as db:  # the block ending at 10 straddles the cut and stays
        blocks = db.execute("SELECT first, last FROM chain_blocks ORDER BY first").fetchall()
        assert blocks == [(7, 10), (11, 12)]
    prev = checkpoint.chain
    for mapping in upgraded.events():
        prev = chain.link(prev, mapping)
        assert mapping["exfilguard.chain.hash"] == prev.hex()
    upgraded.close()
