"""JsonlSink: one alert a line appended to a file (flushed per alert, so `tail -f` sees it at once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from collector.alerts.errors import SinkError
from collector.alerts.sinks.base import QueuedSink


class JsonlSink(QueuedSink):
    """Appends each alert as one JSON line to `path` (directories created as needed)."""

    name = "jsonl"

    def __init__(self, path: str | Path, max_retries: int = 3) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        super().__init__(max_retries)

    def deliver(self, alert: dict[str, Any]) -> None:
        """Append one line; reopen the file if it was rotated away."""
        line = json.dumps(self.document(alert), sort_keys=True, ensure_ascii=False) + "\n"
        try:
            if self._file is None or not self.path.exists():
                if self._file is not None:
                    self._file.close()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._file = None
            raise SinkError(self.name, f"cannot write {self.path}: {exc}") from exc

    def close_resources(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
