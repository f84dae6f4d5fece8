"""The one root of every error ExfilGuard defines.

    ExfilGuardError          root: every exception class of the project derives from it
      LocatedError           something at `location` (a path, URL or file:line:column) is wrong: `reason`

Each package keeps its own documented subtree under this root (`StoreError`, `PolicyError`,
`EvidenceError`, `SensorError`, ...), so a caller catches what it can handle by name and a
command line catches `ExfilGuardError` once. Errors of lower libraries (sqlite3, psycopg,
grpc, OSError from a named file) are translated where they enter our code, `raise ... from exc`.
"""

from __future__ import annotations


class ExfilGuardError(Exception):
    """Root of every error ExfilGuard raises on purpose."""


class LocatedError(ExfilGuardError):
    """What is wrong (`reason`) with the thing at `location`; printed as `location: reason`."""

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(f"{location}: {reason}")
