"""The one root of every error ExfilGuard defines.

    ExfilGuardError          root: every exception class of the project derives from it
      LocatedError           something at `location` (a path, URL or file:line:column) is wrong: `reason`
        PathError            ... and that something is a file: `path`

Each package keeps its own documented subtree under this root (`StoreError`, `PolicyError`,
`EvidenceError`, `SensorError`, ...), so a caller catches what it can handle by name and a
command line catches `ExfilGuardError` once. Errors of lower libraries (sqlite3, psycopg,
grpc, OSError from a named file) are translated where they enter our code, `raise ... from exc`.
"""

from __future__ import annotations

import os


class ExfilGuardError(Exception):
    """Root of every error ExfilGuard raises on purpose."""


class LocatedError(ExfilGuardError):
    """What is wrong (`reason`) with the thing at `location`; printed as `location: reason`."""

    def __init__(self, location: str | os.PathLike[str], reason: str) -> None:
        self.location = str(location)
        self.reason = reason
        super().__init__(f"{self.location}: {reason}")


class PathError(LocatedError):
    """What is wrong (`reason`) with the file at `path`."""

    @property
    def path(self) -> str:
        """The file's path (the location)."""
        return self.location
