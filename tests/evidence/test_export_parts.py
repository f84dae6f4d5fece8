"""Smaller parts of export and retention: progress line, atomic output, argument parsing."""

from __future__ import annotations

import datetime as dt
import errno
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from admin.terminal import parse_time
from collector.evidence import export
from common import units
from tests.evidence.helpers import chained


def test_progress_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    progress = export.Progress(total=3000, enabled=True)
    export.write_export(chained("a", 3000), io.BytesIO(), "jsonl", progress)
    err = capsys.readouterr().err
    assert "100.0% 3000/3000 rows" in err and err.endswith("\n")


def test_failed_export_leaves_no_plausible_file(tmp_path: Path) -> None:
    def broken() -> Iterator[dict[str, Any]]:
        yield from chained("a", 2)
        raise OSError("disk gone")

    target = export.AtomicFile(tmp_path / "out.csv")
    with pytest.raises(OSError):
        try:
            export.write_export(broken(), target.handle, "csv")
        except BaseException:
            target.abort()
            raise
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("child", [False, True])
def test_a_full_disk_fails_the_export_with_its_error(child: bool) -> None:
    # The bytes are written on a thread of their own, or by the CSV child: its error ends the export.
    with Path("/dev/full").open("wb", buffering=0) as full, pytest.raises(OSError) as raised:
        export.write_export(chained("a", 20_000), full, "csv", csv_child=child)
    assert raised.value.errno == errno.ENOSPC


def test_a_failed_export_ends_its_csv_child(tmp_path: Path) -> None:
    def broken() -> Iterator[dict[str, Any]]:
        yield from chained("a", 2000)
        raise OSError("store gone")

    before = {child.pid for child in psutil.Process().children()}
    with (tmp_path / "out.csv").open("wb") as out, pytest.raises(OSError, match="store gone"):
        export.write_export(broken(), out, "csv", csv_child=True)
    assert {child.pid for child in psutil.Process().children()} == before  # ended and reaped


def test_filter_manifest_form() -> None:
    where = export.ExportFilter(since=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), user="alice", alerts=("al-1",))
    assert where.to_dict() == {"since": "2026-11-01T00:00:00.000000Z", "user": "alice", "alert": ["al-1"]}


def test_sizes_ages_and_times_parse() -> None:
    # `exfilguard prune --max-size/--older-than` read common.units, as policies do
    assert units.size("10GiB") == 10 << 30
    assert units.size("500MB") == 500 * 10**6
    assert units.duration("90d", plain_seconds=False) == dt.timedelta(days=90).total_seconds()
    with pytest.raises(units.UnitError, match="--max-size: expected a number or a size"):
        units.size("ten gigs", "--max-size")
    with pytest.raises(units.UnitError, match="--older-than"):
        units.duration("3 months", "--older-than")
    with pytest.raises(units.UnitError):
        units.duration("90", plain_seconds=False)  # an age needs its unit
    assert parse_time("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert parse_time("2026-11-01T08:00:00+01:00") == dt.datetime(2026, 11, 1, 7, tzinfo=dt.UTC)
    ago = dt.datetime.now(dt.UTC) - parse_time("2h")
    assert abs(ago - dt.timedelta(hours=2)) < dt.timedelta(minutes=1)
