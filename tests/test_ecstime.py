"""common.ecstime: the one time format of events, stores, alerts and logs, which sorts as text."""

from __future__ import annotations

import datetime as dt

from common.ecstime import ecs_time


def test_ecs_times_sort_as_text_in_every_year() -> None:
    # `alerts --since 0500-01-01` must compare below every stored time: the year is always 4 digits.
    assert ecs_time(dt.datetime(5, 1, 2, 3, 4, 5, 6)) == "0005-01-02T03:04:05.000006Z"
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert ecs_time(dt.datetime(2026, 1, 31, 9, 15, tzinfo=berlin)) == "2026-01-31T08:15:00.000000Z"
    times = [dt.datetime(999, 12, 31), dt.datetime(1000, 1, 1), dt.datetime(2026, 1, 1)]
    assert sorted(ecs_time(t) for t in times) == [ecs_time(t) for t in times]
