"""Enrollment: an agent trades a one-time token and a CSR for its client certificate.

Served by `EnrollmentServer` on its own port with server-only TLS (the collector's certificate),
because the ingest port demands a client certificate in the handshake. What an agent can get:
a certificate for the agent id its CSR names, and only if the token is unknown to nobody,
unused, unexpired, and (when bound) issued for that id; an id that already holds a valid
certificate needs a bound token, so a token holder cannot take over another agent's identity.

Refusals map to gRPC statuses an admin can act on:
    PERMISSION_DENIED   token unknown, used, expired or bound to another id (details say which)
    ALREADY_EXISTS      the id already holds a valid certificate
    INVALID_ARGUMENT    malformed request, CSR or agent id
    UNAVAILABLE         the CA files cannot be read (details stay in the collector's log)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from collector.config import CollectorConfig
from collector.tls import pki
from common.errors import ExfilGuardError
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc

log = logging.getLogger("exfilguard.collector.enrollment")
_Context = grpc.aio.ServicerContext[pb.EnrollRequest, pb.EnrollResponse]

MAX_TOKEN_CHARS = 256
MAX_REQUEST_BYTES = 64 << 10  # a token and a CSR; anything bigger is not an enrollment
ENROLLMENT_SERVICE = pb.DESCRIPTOR.services_by_name["Enrollment"].full_name


class EnrollmentServicer(pb_grpc.EnrollmentServicer):
    """Signs agents' CSRs with the CA in `authority`, one token per certificate."""

    def __init__(self, authority: pki.CertificateAuthority, cert_days: int = pki.AGENT_DAYS) -> None:
        self._authority = authority
        self._cert_days = cert_days
        # Token redemption is serialised on a file lock; one signer at a time keeps threads free.
        self._lock = asyncio.Lock()

    async def Enroll(self, request: pb.EnrollRequest, context: _Context) -> pb.EnrollResponse:
        """Redeem the token and return the signed certificate and the CA."""
        peer = context.peer()
        if not request.token or len(request.token) > MAX_TOKEN_CHARS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a one-time enrollment token is required")
        if not request.csr_pem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a PEM certificate request is required")
        try:
            async with self._lock:
                cert = await asyncio.to_thread(
                    self._authority.sign_enrollment, request.token, request.csr_pem, self._cert_days
                )
                ca_pem = await asyncio.to_thread(self._authority.ca_cert_path.read_bytes)
        except pki.TokenError as exc:
            log.warning("enrollment refused from %s: token %s", peer, exc.reason)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"enrollment token refused ({exc.reason}): {exc}"
            )
        except pki.EnrolledError as exc:
            log.warning("enrollment refused from %s: agent %s already enrolled", peer, exc.agent_id)
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except (pki.CsrError, pki.AgentIdError) as exc:
            log.warning("enrollment refused from %s: %s", peer, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (pki.PkiError, OSError):
            log.exception("enrollment failed: the CA in %s is not usable", self._authority.directory)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the collector cannot sign certificates right now"
            )
        agent_id = pki.agent_id_of(cert)
        log.info("enrolled agent %s from %s (serial %x)", agent_id, peer, cert.serial_number)
        return pb.EnrollResponse(certificate_pem=pki.cert_pem(cert), ca_pem=ca_pem)


class EnrollmentServer:
    """The enrollment port: grpc.aio server, server-only TLS, Enrollment + health services."""

    def __init__(
        self,
        listen: str,
        authority: pki.CertificateAuthority,
        server_cert_pem: bytes,
        server_key_pem: bytes,
        cert_days: int = pki.AGENT_DAYS,
    ) -> None:
        self.listen = listen
        self.port = 0
        self._authority = authority
        self._credentials = grpc.ssl_server_credentials([(server_key_pem, server_cert_pem)])
        self._cert_days = cert_days
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0). Raises EnrollmentServeError."""
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        pb_grpc.add_EnrollmentServicer_to_server(EnrollmentServicer(self._authority, self._cert_days), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        try:
            self.port = server.add_secure_port(self.listen, self._credentials)
        except RuntimeError as exc:
            raise EnrollmentServeError(self.listen, f"cannot listen: {exc}") from exc
        if self.port == 0:
            raise EnrollmentServeError(self.listen, "cannot listen (address in use or not available here)")
        await server.start()
        await checker.set(ENROLLMENT_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("enrollment listening on %s:%d", self.listen.rpartition(":")[0], self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving (in-flight enrollments get `grace` seconds)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


class EnrollmentServeError(ExfilGuardError):
    """The enrollment port could not be opened; carries the listen address."""

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        super().__init__(f"{address}: {message}")


def from_config(config: CollectorConfig) -> EnrollmentServer | None:
    """The enrollment port configured in collector.yaml (None when `enrollment` is absent)."""
    settings = config.enrollment
    if settings is None:
        return None
    assert config.tls.cert and config.tls.key  # config validation demands them with enrollment
    try:
        cert_pem = Path(config.tls.cert).read_bytes()
        key_pem = Path(config.tls.key).read_bytes()
    except OSError as exc:
        raise EnrollmentServeError(settings.listen, f"cannot read the server certificate: {exc}") from exc
    authority = pki.CertificateAuthority(settings.pki_dir)
    try:
        authority.ca()
    except pki.PkiError as exc:
        raise EnrollmentServeError(
            settings.listen, f"no usable CA for enrollment ({exc}); run `exfilguard certs init-ca`"
        ) from exc
    return EnrollmentServer(settings.listen, authority, cert_pem, key_pem, settings.cert_days)
