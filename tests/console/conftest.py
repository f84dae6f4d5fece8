"""One seeded console for the module's tests (starting one costs three argon2 hashes and a store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.console.limiter import LoginLimiter
from collector.store import open_store
from tests.console.running import RunningConsole, seed


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    """A console on a seeded SQLite store (its login limiter reset before each use)."""
    directory: Path = tmp_path_factory.mktemp("console")
    location = str(directory / "collector.db")
    store = open_store(location)
    try:
        seed(store)
    finally:
        store.close()
    running = RunningConsole(location, directory / "state")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def fresh_limits(console: RunningConsole) -> RunningConsole:
    """The console with its failed-login counts forgotten."""
    assert console.server.state is not None
    console.server.state.limiter = LoginLimiter()
    return console
