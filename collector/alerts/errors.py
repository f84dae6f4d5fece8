"""Errors of the alerts package.

AlertError             root of everything below
  SinkError            a sink could not deliver (sink name, reason); retried by the sink's worker
"""

from __future__ import annotations

from common.errors import ExfilGuardError


class AlertError(ExfilGuardError):
    """Root error of collector.alerts."""


class SinkError(AlertError):
    """Sink `sink` failed to deliver an alert; `retry` says whether trying again may help."""

    def __init__(self, sink: str, reason: str, retry: bool = True) -> None:
        self.sink = sink
        self.reason = reason
        self.retry = retry
        super().__init__(f"{sink}: {reason}")
