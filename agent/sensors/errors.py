"""Errors of the sensors package.

    SensorError               root: a sensor cannot do what was asked
      FanotifyUnavailable     fanotify_init/mark refused (errno, path)
"""

from __future__ import annotations

from common.errors import ExfilGuardError


class SensorError(ExfilGuardError):
    """Root of sensor errors."""


class FanotifyUnavailable(SensorError):
    """The kernel refused a fanotify call; carries errno and the path marked (if any)."""

    def __init__(self, call: str, errno: int, path: str = "") -> None:
        self.call = call
        self.errno = errno
        self.path = path
        super().__init__(f"{call}({path}) failed: errno {errno}")
