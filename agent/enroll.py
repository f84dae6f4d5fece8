"""First contact: trade the one-time enrollment token for this agent's client certificate.

The key is made here and never leaves the machine; the collector sees only a CSR naming the
agent id. The answer is checked before it is kept (signed by the CA we were given, for our
key, bound to our id), then key and certificate are written atomically, key 0600.

Errors (EnrollError and subclasses, each with fields):
    EnrollRefused      the collector said no (code, details): bad or used token, id taken, ...
    EnrollUnreachable  the enrollment port could not be reached or the TLS check failed (address)
    EnrollAnswerError  the collector answered with a certificate we must not use
    EnrollFileError    the CA file could not be read or the key/certificate not written (path)
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from common import agentcert as pki
from common.errors import ExfilGuardError, PathError
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc

log = logging.getLogger("exfilguard.agent.enroll")

CERT_FILE = "agent.crt"
KEY_FILE = "agent.key"
ENROLL_TIMEOUT_SECONDS = 30.0
ENROLL_PORT = 50052  # the collector's default enrollment port (server-only TLS)
_MAX_ANSWER_BYTES = 256 << 10
RENEW_WARNING = dt.timedelta(days=30)


class EnrollError(ExfilGuardError):
    """Root of the enrollment errors."""


class EnrollRefused(EnrollError):
    """The collector refused: `code` is the gRPC status, `details` its reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"enrollment refused ({code.name}): {details}")


class EnrollUnreachable(EnrollError):
    """No answer from the enrollment port (down, wrong address, or its certificate did not verify)."""

    def __init__(self, address: str, details: str) -> None:
        self.address = address
        super().__init__(f"enrollment at {address} failed: {details}")


class EnrollAnswerError(EnrollError):
    """The certificate the collector sent is not one this agent may use."""


class EnrollFileError(EnrollError, PathError):
    """A file could not be read or written; carries the path."""


@dataclass(frozen=True)
class Enrolled:
    """Where the enrolled certificate and key were written."""

    cert_path: Path
    key_path: Path
    serial: int


def enroll(
    address: str,
    ca_path: str | os.PathLike[str],
    token: str,
    agent_id: str,
    out_dir: str | os.PathLike[str],
    *,
    timeout: float = ENROLL_TIMEOUT_SECONDS,
) -> Enrolled:
    """Enroll `agent_id` at `address` (host:port of the collector's enrollment port)."""
    ca_pem = _read(Path(ca_path))
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise EnrollFileError(ca_path, "not a PEM CA certificate") from exc
    key = pki.new_key()
    request = pb.EnrollRequest(token=token, csr_pem=pki.make_csr(agent_id, key))
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = [("grpc.max_receive_message_length", _MAX_ANSWER_BYTES)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        try:
            answer: pb.EnrollResponse = pb_grpc.EnrollmentStub(channel).Enroll(request, timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            details = str(exc.details())
            if code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}:
                raise EnrollUnreachable(address, f"{code.name}: {details}") from exc
            raise EnrollRefused(code, details) from exc
    cert = _check_answer(answer, ca_cert, key.public_key(), agent_id)
    directory = Path(out_dir)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Key first: a certificate on disk without its key would look enrolled and never work.
        pki.write_file(key_path, pki.key_pem(key), 0o600)
        pki.write_file(cert_path, pki.cert_pem(cert), 0o644)
    except OSError as exc:
        raise EnrollFileError(exc.filename or directory, exc.strerror or str(exc)) from exc
    return Enrolled(cert_path=cert_path, key_path=key_path, serial=cert.serial_number)


def _check_answer(
    answer: pb.EnrollResponse, ca_cert: x509.Certificate, public_key: object, agent_id: str
) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(answer.certificate_pem)
    except ValueError as exc:
        raise EnrollAnswerError("the collector sent no valid certificate") from exc
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollAnswerError("the certificate is not signed by our CA") from exc
    if cert.public_key() != public_key:
        raise EnrollAnswerError("the certificate is not for the key this agent made")
    if pki.agent_id_of(cert) != agent_id:
        raise EnrollAnswerError(f"the certificate is not bound to agent id {agent_id}")
    return cert


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(_MAX_ANSWER_BYTES)
    except OSError as exc:
        raise EnrollFileError(path, exc.strerror or str(exc)) from exc


class CredentialsError(EnrollError):
    """The agent's TLS files are missing or unusable; `key` is the agent.yaml key to fix."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"tls.{key}: {message}")


def enroll_address(collector: str, configured: str | None) -> str:
    """Where to enroll: the configured address, else the collector's host on ENROLL_PORT."""
    if configured:
        return configured
    host = collector.rpartition(":")[0]
    return f"{host}:{ENROLL_PORT}"


def client_credentials(
    *,
    ca: str,
    cert: str | None,
    key: str | None,
    state_dir: str | os.PathLike[str],
    agent_id: str,
    token: str | None = None,
    enroll_at: str | None = None,
    timeout: float = ENROLL_TIMEOUT_SECONDS,
) -> grpc.ChannelCredentials:
    """mTLS credentials for the collector: configured cert/key, else the enrolled ones under
    `state_dir`, enrolling first (with `token` at `enroll_at`) when there are none yet."""
    cert_path = Path(cert) if cert else Path(state_dir) / CERT_FILE
    key_path = Path(key) if key else Path(state_dir) / KEY_FILE
    if not cert_path.exists() and not key_path.exists():
        if cert or not token or not enroll_at:
            raise CredentialsError(
                "cert", f"no client certificate at {cert_path}: set tls.cert and tls.key, "
                "or tls.enrollment_token to enroll",
            )
        enroll(enroll_at, ca, token, agent_id, cert_path.parent, timeout=timeout)
    ca_pem = _read_key(ca, "ca")
    cert_pem, key_pem = _read_key(cert_path, "cert"), _read_key(key_path, "key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CredentialsError("cert", f"{cert_path}: not a PEM certificate") from exc
    bound = pki.agent_id_of(certificate)
    if bound != agent_id:
        # The collector would refuse every stream; say why here, where the admin looks.
        raise CredentialsError(
            "cert", f"{cert_path} is for agent {bound!r}, but this agent's id is {agent_id!r}"
        )
    _warn_expiry(certificate, cert_path)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                        certificate_chain=cert_pem)


def _warn_expiry(certificate: x509.Certificate, path: Path) -> None:
    # Not fatal: an agent that cannot deliver still spools, so nothing is lost while the admin
    # renews; but the collector's handshake will refuse it, so say why where the admin looks.
    left = certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left <= dt.timedelta(0):
        log.error("client certificate %s expired on %s: the collector will refuse this agent; issue a "
                  "new one (certs agent, or certs token --agent-id)", path, certificate.not_valid_after_utc)
    elif left <= RENEW_WARNING:
        log.warning("client certificate %s expires on %s", path, certificate.not_valid_after_utc)


def _read_key(path: str | os.PathLike[str], key: str) -> bytes:
    try:
        return _read(Path(path))
    except EnrollFileError as exc:
        raise CredentialsError(key, str(exc)) from exc
