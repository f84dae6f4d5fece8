"""Server transport security: the one place that turns the config's `tls` section into credentials.

Today only plaintext on loopback (`tls.insecure_loopback: true`) is built; mTLS (cert, key,
client_ca) plugs in here (`server_credentials`, `server_interceptors`), and the server needs no
other change.
"""

from __future__ import annotations

import grpc

from collector.config import CollectorTls


class TlsError(Exception):
    """The TLS settings cannot be turned into server credentials; carries the config key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"tls.{key}: {message}")


def server_interceptors(tls: CollectorTls) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors the agent port runs (e.g. checking the client certificate against the agent id)."""
    return []


def server_credentials(tls: CollectorTls) -> grpc.ServerCredentials | None:
    """Credentials for the agent port; None means an insecure (loopback-only) port."""
    if tls.insecure_loopback:
        return None
    raise TlsError("cert", "mTLS is not available in this build yet; use insecure_loopback on loopback")
