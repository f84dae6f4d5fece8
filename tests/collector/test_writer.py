"""StoreWriter: batches from many streams share a commit, and one bad batch fails alone (on both stores)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.ingest import StoreWriter
from collector.store import Store, StoreError, open_store
from tests.helpers import make_event, make_events


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens the same fresh store each call: a SQLite file, or a database of the throwaway cluster."""
    location = str(tmp_path / "c.db")
    if request.param == "postgresql":
        location = str(request.getfixturevalue("pg_url"))
    return lambda: open_store(location)


async def _scenario(store: Store) -> None:
    writer = StoreWriter(store, seal_inline=True)
    try:
        bad = [make_event("bad", 1)]
        bad[0].event.sequence = 1 << 63  # the ingest service refuses this; here it reaches the store
        results = await asyncio.gather(
            writer.ingest("good", make_events("good", 1, 50)),
            writer.ingest("bad", bad),
            writer.ingest("other", make_events("other", 1, 5)),
            return_exceptions=True,
        )
        good, failed, other = results
        assert not isinstance(good, BaseException)
        assert not isinstance(other, BaseException)
        assert (good.watermark, other.watermark) == (50, 5)
        assert isinstance(failed, StoreError)
        assert await writer.call(store.count_events) == 55
    finally:
        await writer.close()
        store.close()


def test_a_failing_batch_does_not_fail_the_others_in_its_commit(new_store: Callable[[], Store]) -> None:
    asyncio.run(_scenario(new_store()))


def test_store_rejects_sequences_beyond_int64_as_store_error(new_store: Callable[[], Store]) -> None:
    store = new_store()
    event = make_event("a", 1)
    event.event.sequence = 1 << 63
    with pytest.raises(StoreError):
        store.ingest("a", [event])
    assert store.ingest("a", make_events("a", 1, 2)) == 2
    store.close()
