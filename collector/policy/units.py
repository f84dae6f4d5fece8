"""Durations (30s, 10m, 2h, 7d), sizes (500MiB, 2GB) and percentages (80%) as policies write them."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
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

# No window may outlive this: window state must expire (memory is bounded by time too).
MAX_DURATION_SECONDS = 90 * 86400.0


def duration(value: object) -> float:
    """Seconds in `value` ("10m", "90s", or a plain number of seconds); ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s, 10m, 2h or 7d, got {value!r}")
    if not 0 < seconds <= MAX_DURATION_SECONDS:
        raise ValueError(f"duration must be above 0 and at most 90d, got {value!r}")
    return seconds


def number(value: object) -> float:
    """A number, or a size with a unit ("500MiB" -> 524288000); ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "b").lower()
        return float(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError(f"expected a number or a size such as 500MiB, got {value!r}")


def fraction(value: object) -> float:
    """A share: "80%" or 0.8 -> 0.8; ValueError unless within 0..1."""
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage such as 80%, got {value!r}")
    if isinstance(value, str) and (m := _PERCENT.match(value)):
        share = float(m.group(1)) / 100
    elif isinstance(value, (int, float)):
        share = float(value)
    else:
        raise ValueError(f"expected a percentage such as 80%, got {value!r}")
    if not 0 < share <= 1:
        raise ValueError(f"a share must be above 0% and at most 100%, got {value!r}")
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
