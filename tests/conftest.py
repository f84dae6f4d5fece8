"""Shared test set-up. Under CI=true a skipped test fails the run: root tests must really run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.pg import PgCluster

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the run (tests/pg.py); skips with the reason if none can start."""
    from tests.pg import PgUnavailable, throwaway_cluster

    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster())
        except PgUnavailable as exc:
            pytest.skip(f"no PostgreSQL server for the tests: {exc}")
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The postgresql:// URL (with the role's password) of a new, empty database."""
    return pg_cluster.url(pg_cluster.create_database())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not IN_CI or reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; a skip is a failure in CI", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
