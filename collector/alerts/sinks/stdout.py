"""StdoutSink: one alert a line on standard output (the quickstart and journald show it)."""

from __future__ import annotations

import json
import sys
from typing import Any

from collector.alerts.errors import SinkError
from collector.alerts.sinks.base import QueuedSink


class StdoutSink(QueuedSink):
    """Prints each alert as one JSON line."""

    name = "stdout"

    def deliver(self, alert: dict[str, Any]) -> None:
        """Write and flush one line."""
        try:
            sys.stdout.write(json.dumps(self.document(alert), sort_keys=True, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(self.name, f"cannot write to stdout: {exc}", retry=False) from exc
