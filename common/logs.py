"""Structured logs: one JSON object a line on stdout (journald keeps them as they are)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from common.ecstime import ecs_time_at

# LogRecord attributes that are plumbing, not context worth a field of its own.
_PLUMBING = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}`; `extra=` keys become fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for the record."""
        line: dict[str, Any] = {
            "ts": ecs_time_at(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _PLUMBING and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "info") -> None:
    """Send all `exfilguard.*` logging to stdout as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelNamesMapping().get(level.upper())
    root.setLevel(numeric if numeric is not None else logging.INFO)
    if numeric is None:
        logging.getLogger("exfilguard").warning("unknown log_level %r; logging at info", level)
