"""StoreWriter: batches from many streams share a commit, and one bad batch fails alone (on both stores)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.ingest import StoreWriter
from collector.store import Store, StoreError, open_store
from tests.helpers import Held, make_event, make_events


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


async def _ingest_under_a_sealer(path: Path, sealing: bool, peaks: list[int | None]) -> float:
    """Ingest 12 batches of 500 while (if `sealing`) a slow sealer chains 200 events every 0.1 s."""
    store = open_store(str(path))
    sealer = open_store(str(path))
    writer = StoreWriter(store, seal_inline=False)
    stop = asyncio.Event()

    async def seal_slowly() -> None:
        while not stop.is_set():
            await asyncio.to_thread(sealer.seal, 200)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(seal_slowly()) if sealing else None
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for first in range(1, 6001, 500):
            await writer.ingest("a1", make_events("a1", first, first + 499))
            peaks.append(await asyncio.to_thread(sealer.unsealed))
        return loop.time() - started
    finally:
        stop.set()
        if task is not None:
            await task
        await writer.close()
        store.close()
        sealer.close()


def test_commits_wait_for_a_sealer_that_trails_but_not_for_one_that_stalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector import ingest

    monkeypatch.setattr(ingest, "MAX_UNSEALED", 1000)
    peaks: list[int | None] = []
    asyncio.run(_ingest_under_a_sealer(tmp_path / "slow.db", True, peaks))
    # Checked before each commit: at most one batch beyond the bound (6,000 without the wait).
    assert max(p or 0 for p in peaks) <= 1000 + 500, peaks
    stalled: list[int | None] = []
    took = asyncio.run(_ingest_under_a_sealer(tmp_path / "none.db", False, stalled))
    assert stalled[-1] == 6000  # nothing chains them, and ingest went on: one stall, then no waits
    assert took < 8, took


async def _commits_under_a_held_listener(path: Path) -> None:
    from collector import ingest

    store = open_store(str(path))
    held = Held()
    writer = StoreWriter(store, seal_inline=True, listeners=[held])
    try:
        # One commit each: the listener holds the first, and the next ones still commit...
        committed = []
        for first in range(1, 1 + 10 * (ingest._LISTENING_GROUPS + 1), 10):
            committed.append((await writer.ingest("a", make_events("a", first, first + 9))).watermark)
        assert committed[-1] == 10 * (ingest._LISTENING_GROUPS + 1)
        # ... until that many commits wait for it: then the commit after the next one waits too.
        last = 10 * (ingest._LISTENING_GROUPS + 1)
        assert (await writer.ingest("a", make_events("a", last + 1, last + 10))).watermark == last + 10
        nothing = writer.submit("a", make_events("a", last + 11, last + 20))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(nothing), 0.5)
        held.release.set()
        assert (await nothing).watermark == last + 20
    finally:
        held.release.set()
        await writer.close()  # passes every stored event on before it returns
        store.close()
    assert held.sequences == list(range(1, last + 21))


def test_storing_goes_on_while_listeners_take_earlier_commits_up_to_a_bound(tmp_path: Path) -> None:
    asyncio.run(_commits_under_a_held_listener(tmp_path / "held.db"))
