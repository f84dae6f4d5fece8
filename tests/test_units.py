"""common.units: the one grammar of durations and sizes, read by policies, prune, alerts/export --since
and certs --ttl; each bad value is refused with what was given and where."""

from __future__ import annotations

import pytest

from common import units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 7 * 86400), ("1w", 604800), ("1.5h", 5400),
     ("250ms", 0.25), (" 5 m ", 300), (90, 90), (2.5, 2.5), ("3600", 3600)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert units.duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MiB", 500 << 20), ("2GB", 2 * 10**9), ("10gib", 10 << 30), ("1PiB", 1 << 50), ("1048576", 1 << 20),
     ("1.5 KiB", 1536), (4096, 4096)],
)  # fmt: skip
def test_sizes(text: object, size: float) -> None:
    assert units.size(text) == size


@pytest.mark.parametrize("bad", ["ten minutes", "24 hours", "-5m", "5x", "", True, None, "1e3s"])
def test_a_bad_duration_names_the_option_and_the_value(bad: object) -> None:
    with pytest.raises(units.UnitError) as caught:
        units.duration(bad, "--older-than")
    assert str(caught.value) == f"--older-than: expected a duration such as 30s, 10m, 2h or 7d, got {bad!r}"
    assert isinstance(caught.value, ValueError)  # policies record any ValueError with its file:line


def test_ranges_and_plain_numbers() -> None:
    with pytest.raises(units.UnitError, match="above 0 and at most 90d"):
        units.duration("91d", maximum=90 * 86400)
    with pytest.raises(units.UnitError, match="above 0"):
        units.duration("0s")
    assert units.duration("0s", zero=True) == 0
    with pytest.raises(units.UnitError):  # where a unit is required (ages, `--since`)
        units.duration("90", plain_seconds=False)
    with pytest.raises(units.UnitError):
        units.duration(90, plain_seconds=False)
    with pytest.raises(units.UnitError, match="--max-size: expected a number or a size such as 500MiB"):
        units.size("ten gigs", "--max-size")
    assert units.fraction("80%") == 0.8
    assert units.human_duration(600) == "10m" and units.human_bytes(1536) == "1.5 KiB"

