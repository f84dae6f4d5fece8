"""Reading a page's query and form values: lists with limits, times, pages, and links that keep them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from multidict import MultiMapping

from collector.console.errors import BadParameter
from common import units
from common.ecstime import ecs_time

MAX_VALUE_CHARS = 200
MAX_VALUES = 100


def values(query: MultiMapping[Any], name: str) -> tuple[str, ...]:
    """Every non-empty value of `name` (repeated, or comma-separated), at most MAX_VALUES."""
    out: list[str] = []
    for raw in query.getall(name, []):
        for piece in str(raw).split(","):
            part = piece.strip()
            if part:
                if len(part) > MAX_VALUE_CHARS:
                    raise BadParameter(name, f"at most {MAX_VALUE_CHARS} characters")
                out.append(part)
    if len(out) > MAX_VALUES:
        raise BadParameter(name, f"at most {MAX_VALUES} values")
    return tuple(dict.fromkeys(out))


def one(query: Mapping[str, Any], name: str, default: str = "") -> str:
    """One value (the first), stripped; at most MAX_VALUE_CHARS."""
    value = str(query.get(name, default)).strip()
    if len(value) > MAX_VALUE_CHARS:
        raise BadParameter(name, f"at most {MAX_VALUE_CHARS} characters")
    return value


def moment(name: str, text: str, now: dt.datetime | None = None) -> str:
    """An ECS time from a duration ago (`90m`, `24h`, `7d`: common.units' grammar, as the CLI's
    `--since`) or an ISO 8601 date/time (UTC unless it says so); '' for ''."""
    text = text.strip()
    if not text:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    try:
        try:
            ago = units.duration(text, name, plain_seconds=False, zero=True)
        except units.UnitError:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            return ecs_time(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
        return ecs_time(now - dt.timedelta(seconds=ago))
    except (ValueError, OverflowError) as exc:
        raise BadParameter(name, f"not a time like 24h, 7d or 2026-01-31: {text[:40]!r}") from exc


def page_number(query: Mapping[str, Any]) -> int:
    """The `page` parameter (1 when absent)."""
    text = str(query.get("page", "1"))
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise BadParameter("page", "a number from 1 to 10000")
    return int(text)


def link(path: str, query: MultiMapping[Any], **changes: str | int | None) -> str:
    """`path` with the current query, some parameters changed (None: removed)."""
    pairs = [(k, str(v)) for k, v in query.items() if k not in changes]
    pairs += [(k, str(v)) for k, v in changes.items() if v is not None and v != ""]
    return path + ("?" + urlencode(pairs) if pairs else "")
