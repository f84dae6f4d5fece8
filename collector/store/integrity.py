"""The collector's start-up check of a SQLite store: damaged pages are found before any write is acked.

A store with flipped bytes would otherwise be opened, keep acknowledging writes into a file
that cannot be read back (an export then fails "malformed"), and the agents would have deleted
those events from their spools. `check_sqlite` runs SQLite's `PRAGMA quick_check` (every page
and row of every table and index, without the slower cross-checks of `integrity_check`) on a
read-only connection, for at most `seconds`: a store too big to finish in time is checked as far
as the budget goes, and the log says so. PostgreSQL stores are the server's to keep whole.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from collector.store.base import StoreCorrupt

_MAX_PROBLEMS = 5  # named in the refusal; SQLite stops counting there too
_PROGRESS_OPS = 10_000  # SQLite VM steps between two looks at the clock


@dataclass
class IntegrityReport:
    """What the check found: `problems` (empty when none), whether it finished, how long it took."""

    path: str
    problems: list[str] = field(default_factory=list)
    complete: bool = True
    seconds: float = 0.0


def check_sqlite(path: str | Path, seconds: float) -> IntegrityReport:
    """Quick-check an existing SQLite store within `seconds`; StoreCorrupt if SQLite cannot even read it."""
    report = IntegrityReport(str(path))
    store = Path(path)
    if not store.exists() or store.stat().st_size == 0:
        return report  # a new store: nothing to check yet
    started = time.monotonic()
    deadline = started + seconds
    try:
        db = sqlite3.connect(f"file:{quote(str(store.resolve()))}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreCorrupt(str(path), f"cannot be opened for its integrity check: {exc}") from exc
    interrupted = False

    def over_budget() -> int:
        nonlocal interrupted
        interrupted = time.monotonic() > deadline
        return 1 if interrupted else 0  # non-zero interrupts the statement

    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.set_progress_handler(over_budget, _PROGRESS_OPS)
        try:
            rows = db.execute(f"PRAGMA quick_check({_MAX_PROBLEMS})").fetchall()
        except sqlite3.OperationalError:
            if not interrupted:
                raise
            rows = []
            report.complete = False
        report.problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        report.problems = [str(exc)]
    finally:
        db.close()
        report.seconds = time.monotonic() - started
    return report
