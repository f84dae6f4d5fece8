"""Errors of the forwarding package.

ForwardError          root of everything below
  DeliveryError       a destination did not take a batch: `reason` (one of REASONS, the metrics
                      label) and what happened; the worker retries, its cursor waits
"""

from __future__ import annotations

from common.errors import ExfilGuardError

# Why a delivery failed: a fixed set, so the metrics label stays bounded.
REASONS = ("http_4xx", "http_5xx", "timeout", "connection", "tls", "rejected")


class ForwardError(ExfilGuardError):
    """Root error of collector.forward."""


class DeliveryError(ForwardError):
    """A destination did not take a batch (`reason` in REASONS)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason if reason in REASONS else "connection"
        self.message = message
        super().__init__(message)
