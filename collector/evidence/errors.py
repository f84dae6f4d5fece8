"""Errors of the evidence package.

    EvidenceError            root of everything below (under common.errors.ExfilGuardError)
      EvidenceFileError      a file of the evidence trail at `path` cannot be used (`reason`)
        SigningKeyError      the collector's Ed25519 key cannot be read, created or parsed
        ManifestError        a manifest is unreadable or malformed
        ExportError          an export cannot be written
      RetentionError         a retention request is invalid or the store refused it (`reason`)

A failed verification is not an exception: `verify` returns a Report naming the problem.
"""

from __future__ import annotations

from common.errors import ExfilGuardError, PathError


class EvidenceError(ExfilGuardError):
    """Root error of collector.evidence."""


class EvidenceFileError(EvidenceError, PathError):
    """A file of the evidence trail at `path` cannot be used (`reason`)."""


class SigningKeyError(EvidenceFileError):
    """The signing key at `path` cannot be used."""


class ManifestError(EvidenceFileError):
    """The manifest at `path` is unreadable or malformed."""


class ExportError(EvidenceFileError):
    """An export to `path` failed."""


class RetentionError(EvidenceError):
    """A retention request is invalid (`reason`)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
