"""The start-up integrity check: a damaged SQLite store is refused by name, before any write is acked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from collector.store import integrity
from collector.store.sqlite import PAGE_SIZE, SqliteStore
from tests.helpers import REPO, make_events, write_collector_config


def _store_with_events(path: Path, events: int = 2_000) -> None:
    store = SqliteStore(path)
    store.ingest_batches([("ws-1", make_events("ws-1", 1, events))])
    store.close()  # the last connection checkpoints the WAL into the file


def _flip_a_page_in_the_middle(path: Path) -> None:
    pages = path.stat().st_size // PAGE_SIZE
    with path.open("r+b") as f:
        f.seek(PAGE_SIZE * (pages // 2))
        f.write(b"\xaa" * 64)


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_store_with_flipped_bytes_is_refused_with_exit_code_2_naming_the_file(tmp_path: Path) -> None:
    store = tmp_path / "collector.db"
    _store_with_events(store)
    assert integrity.check_sqlite(store, 10).problems == []
    _flip_a_page_in_the_middle(store)
    config = write_collector_config(tmp_path)
    done = _start(config)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"store {store} is damaged" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_the_check_is_bounded_in_time(tmp_path: Path) -> None:
    store = tmp_path / "collector.db"
    _store_with_events(store, 5_000)
    report = integrity.check_sqlite(store, 0.0)  # no time at all: stops at the first look at the clock
    assert not report.complete
    assert report.problems == []
    assert integrity.check_sqlite(store, 30).complete


def test_a_new_store_needs_no_check(tmp_path: Path) -> None:
    report = integrity.check_sqlite(tmp_path / "absent.db", 10)
    assert report.complete and report.problems == []
