"""The one time format of events, stores, alerts, exports and logs: ECS time strings.

UTC, microseconds, trailing Z (`2026-01-31T08:15:00.123456Z`): they sort as text, so stores
compare and index them as strings. protos.events writes protobuf Timestamps in this form.
"""

from __future__ import annotations

import datetime as dt
import math

ECS_SECONDS = "%Y-%m-%dT%H:%M:%S."  # the part before the microseconds
ECS_TIME = ECS_SECONDS + "%fZ"  # UTC, microseconds, trailing Z: sorts as text


def ecs_time(moment: dt.datetime) -> str:
    """ECS time string of a datetime (naive means UTC): the one time format of events and stores."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    moment = moment.astimezone(dt.UTC)
    if moment.year < 1000:  # strftime's %Y does not pad them (glibc), and the text must sort as time
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return moment.strftime(ECS_TIME)


# The text of recent seconds (a flush interleaves the times of two or three seconds).
_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 64


def ecs_time_at(epoch: float) -> str:
    """ECS time string of a wall-clock time in seconds since the epoch.

    The text of `datetime.fromtimestamp(epoch, UTC)` (its rounding of the microseconds, half to
    even, repeated here), with the part before the microseconds kept for recent seconds: a
    registry flush writes thousands of times of the same few seconds.
    """
    fraction, whole = math.modf(epoch)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    second = int(whole)
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        prefix = _SECONDS[second] = dt.datetime.fromtimestamp(second, dt.UTC).strftime(ECS_SECONDS)
    return f"{prefix}{micro:06d}Z"


def ecs_now() -> str:
    """ECS time string of now."""
    return dt.datetime.now(dt.UTC).strftime(ECS_TIME)


def ecs_epoch(text: object) -> float | None:
    """Seconds since the epoch of an ECS (or any ISO 8601) time string; None if it is none."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
