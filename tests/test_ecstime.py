"""common.ecstime: the one time format of events, stores, alerts and logs, which sorts as text."""

from __future__ import annotations

import datetime as dt
import random

from common.ecstime import ecs_time, ecs_time_at


def test_ecs_times_sort_as_text_in_every_year() -> None:
    # `alerts --since 0500-01-01` must compare below every stored time: the year is always 4 digits.
    assert ecs_time(dt.datetime(5, 1, 2, 3, 4, 5, 6)) == "0005-01-02T03:04:05.000006Z"
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert ecs_time(dt.datetime(2026, 1, 31, 9, 15, tzinfo=berlin)) == "2026-01-31T08:15:00.000000Z"
    times = [dt.datetime(999, 12, 31), dt.datetime(1000, 1, 1), dt.datetime(2026, 1, 1)]
    assert sorted(ecs_time(t) for t in times) == [ecs_time(t) for t in times]


def test_a_wall_clock_time_is_written_as_datetime_writes_it() -> None:
    # ecs_time_at keeps the text of the latest second and rounds the microseconds itself.
    rng = random.Random(13)
    moments = [0.0, 1.5, 1_780_000_000.0, 1_780_000_000.9999996, 1_780_000_000.0000005, -0.25, -1.9999999]
    moments += [rng.uniform(-1e9, 4e9) for _ in range(20_000)]
    start = rng.uniform(1.7e9, 1.8e9)
    moments += [start + n * rng.uniform(0, 2e-6) for n in range(20_000)]  # neighbours: the kept second
    for epoch in moments:
        written = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert ecs_time_at(epoch) == written, epoch
