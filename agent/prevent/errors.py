"""Errors of the prevention package.

    PreventError            root: prevention cannot do what the config asks (`what`, errno)
"""

from __future__ import annotations

from agent.sensors.errors import SensorError


class PreventError(SensorError):
    """Prevention cannot do what prevent: asks here; `what` failed with `errno`."""

    def __init__(self, what: str, errno: int = 0) -> None:
        self.what = what
        self.errno = errno
        super().__init__(f"prevention: {what}" + (f" (errno {errno})" if errno else ""))
