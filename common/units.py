"""The one grammar of durations (30s, 10m, 2h, 7d) and sizes (500MiB, 2GB) everywhere they are written.

Policies (`window: 10m`, `gte: 500MiB`), `exfilguard prune --older-than 90d --max-size 10GiB`,
`exfilguard alerts/export --since 24h` and `exfilguard certs token --ttl 1h` read them here:

    duration   a number and a unit ms, s, m, h, d or w (decimals allowed: 1.5h); where the
               caller allows it (policies, --ttl), a number without a unit is seconds
    size       a number and an optional unit B, kB..PB (powers of 1000) or KiB..PiB (powers
               of 1024), case-insensitive; a plain number is bytes

A bad value raises `UnitError` naming what was given and, when the caller says, where (an
option such as `--since`; policies add their own file:line:column and error code).
"""

from __future__ import annotations

import re

from common.errors import ExfilGuardError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class UnitError(ExfilGuardError, ValueError):
    """A duration, size or share that does not parse or is out of range; `where` names the option."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {reason}" if where else reason)


def duration(
    value: object,
    where: str = "",
    *,
    maximum: float | None = None,
    plain_seconds: bool = True,
    zero: bool = False,
) -> float:
    """Seconds in `value` ("10m", "1.5h", or a plain number of seconds unless `plain_seconds` is
    False); above 0 (or at least 0 with `zero`) and at most `maximum`; UnitError if not."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and plain_seconds:
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)) and (m.group(2) or plain_seconds):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    else:
        raise UnitError(f"expected a duration such as 30s, 10m, 2h or 7d, got {value!r}", where)
    if seconds < 0 or (seconds == 0 and not zero) or (maximum is not None and seconds > maximum):
        low = "at least 0" if zero else "above 0"
        high = f" and at most {human_duration(maximum)}" if maximum is not None else ""
        raise UnitError(f"duration must be {low}{high}, got {value!r}", where)
    return seconds


def size(value: object, where: str = "") -> float:
    """Bytes in `value`: a number, or a size with a unit ("500MiB" -> 524288000); UnitError if not."""
    if isinstance(value, bool):
        raise UnitError(f"expected a number, got {value!r}", where)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    raise UnitError(f"expected a number or a size such as 500MiB, got {value!r}", where)


def fraction(value: object, where: str = "") -> float:
    """A share: "80%" or 0.8 -> 0.8; UnitError unless within 0..1."""
    if isinstance(value, bool):
        raise UnitError(f"expected a percentage such as 80%, got {value!r}", where)
    if isinstance(value, str) and (m := _PERCENT.match(value)):
        share = float(m.group(1)) / 100
    elif isinstance(value, (int, float)):
        share = float(value)
    else:
        raise UnitError(f"expected a percentage such as 80%, got {value!r}", where)
    if not 0 < share <= 1:
        raise UnitError(f"a share must be above 0% and at most 100%, got {value!r}", where)
    return share


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (alert summaries)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    """600 -> '10m'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
