"""A PostgreSQL outage in the collector's log: one line per process when it begins, naming the
database and the error, none while it lasts, one when the database answers again; no traceback.
A real collector (with its sealer and policy processes) on a real PostgreSQL, stopped and started."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from collector.store.pgconnect import describe
from tests.e2e.harness import wait_for
from tests.fleet.harness import Fleet
from tests.pg import PgCluster

pytestmark = pytest.mark.slow

DOWN = "unavailable ("
UP = "answers again after"


def _lines(log: str, text: str) -> list[str]:
    return [json.loads(line)["msg"] for line in log.splitlines() if text in line]


def test_an_outage_is_one_line_when_it_begins_and_one_when_it_ends(
    tmp_path: Path, pg_url: str, pg_cluster: PgCluster
) -> None:
    fleet = Fleet(tmp_path, pg_url, 1, silent_agent_seconds=1)  # its silence check retries too
    try:
        collector = fleet.start_collector(0)
        pg_cluster.stop("fast")
        try:
            wait_for(lambda: len(_lines(collector.log_text(), DOWN)) >= 3, 30, "each process to say so")
            time.sleep(3)  # several retries (each second, in each loop) that must not log again
        finally:
            pg_cluster.start()
        wait_for(lambda: len(_lines(collector.log_text(), UP)) >= 3, 30, "each process to say it is back")
        log = collector.log_text()
    finally:
        fleet.close()
    down = _lines(log, DOWN)
    assert len(down) == 3, down  # the collector, its sealer and its policy process: once each
    assert all(describe(pg_url) in line and "connection" in line for line in down), down
    up = _lines(log, UP)
    assert len(up) == 3 and all("failed attempts" in line for line in up), up
    assert "Traceback" not in log
