"""Errors of the alerts package.

AlertError             root of everything below
  SinkError            a sink could not deliver (sink name, reason); retried by the sink's worker
  SinkSetupError       a sink cannot be built: a secret or template missing or bad (a LocatedError)
    SinkFileError      ... and it is a file (a PathError)
"""

from __future__ import annotations

from common.errors import ExfilGuardError, LocatedError, PathError


class AlertError(ExfilGuardError):
    """Root error of collector.alerts."""


class SinkError(AlertError):
    """Sink `sink` failed to deliver an alert; `retry` says whether trying again may help."""

    def __init__(self, sink: str, reason: str, retry: bool = True) -> None:
        self.sink = sink
        self.reason = reason
        self.retry = retry
        super().__init__(f"{sink}: {reason}")


class SinkSetupError(AlertError, LocatedError):
    """A sink cannot start: what is wrong (`reason`) with the file or variable at `location`."""


class SinkFileError(PathError, SinkSetupError):
    """A file a sink needs (secret, template, certificate) is missing, unreadable or bad."""
