"""Server transport security: the one place that turns the config's `tls` section into credentials.

Plaintext on loopback (`tls.insecure_loopback: true`), or mTLS built by collector.tls.mtls: the
handshake demands a client certificate of `client_ca`, and `server_interceptors()` binds each
ingest stream to the agent id in that certificate and refuses revoked ones (`crl`).
"""

from __future__ import annotations

import grpc

from collector.config import CollectorTls
from collector.tls import mtls
from common.errors import ExfilGuardError


class TlsError(ExfilGuardError):
    """The TLS settings cannot be turned into server credentials; carries the config key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"tls.{key}: {message}")


def server_interceptors(
    tls: CollectorTls, refused: mtls.Refused | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors the agent port runs: the client certificate's agent id and revocation.

    `refused(code, reason)` is told of each stream they refuse (for metrics).
    """
    if tls.insecure_loopback:
        return []
    assert tls.client_ca  # CollectorTls validation demands it without insecure_loopback
    try:
        revocations = mtls.RevocationList(tls.crl, tls.client_ca) if tls.crl else None
    except mtls.MtlsError as exc:
        raise TlsError(exc.key, exc.detail) from exc
    if refused is None:
        return [mtls.AgentAuthInterceptor(revocations)]
    return [mtls.AgentAuthInterceptor(revocations, refused=refused)]


def server_credentials(tls: CollectorTls) -> grpc.ServerCredentials | None:
    """Credentials for the agent port; None means an insecure (loopback-only) port."""
    if tls.insecure_loopback:
        return None
    assert tls.cert and tls.key and tls.client_ca  # CollectorTls validation demands all three
    try:
        return mtls.server_credentials(tls.cert, tls.key, tls.client_ca)
    except mtls.MtlsError as exc:
        raise TlsError(exc.key, exc.detail) from exc
