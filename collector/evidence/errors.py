"""Errors of the evidence package.

    EvidenceError            root of everything below
      SigningKeyError        the collector's Ed25519 key cannot be read, created or parsed (path)
      ManifestError          a manifest is unreadable or malformed (path)
      ExportError            an export cannot be written (path)
      RetentionError         a retention request is invalid or the store refused it

A failed verification is not an exception: `verify` returns a Report naming the problem.
"""

from __future__ import annotations


class EvidenceError(Exception):
    """Root error of collector.evidence."""


class SigningKeyError(EvidenceError):
    """The signing key at `path` cannot be used."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ManifestError(EvidenceError):
    """The manifest at `path` is unreadable or malformed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ExportError(EvidenceError):
    """An export to `path` failed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class RetentionError(EvidenceError):
    """A retention request is invalid (`reason`)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
