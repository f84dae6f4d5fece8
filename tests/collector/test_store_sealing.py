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
