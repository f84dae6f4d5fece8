"""mTLS on the agents' port: server credentials that demand a client certificate, and the checks
TLS alone cannot make — the certificate names an agent, it is not revoked, and the stream's
hello speaks for that same agent.

The TLS handshake (gRPC's) already refuses a client with no certificate, one from another CA
and an expired one: those agents see UNAVAILABLE with a handshake failure and never reach a
servicer. `AgentAuthInterceptor` then answers, on the ingest stream:

    UNAUTHENTICATED     the certificate carries no agent id (e.g. the collector's own cert)
    PERMISSION_DENIED   the certificate is revoked (checked at connect and on every message,
                        so `exfilguard certs revoke` cuts a live stream), or hello.agent_id
                        is not the id in the certificate

Errors: MtlsError(key, message) when the configured files cannot make credentials.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector import metrics
from collector.tls import pki
from common.errors import ExfilGuardError
from protos import exfilguard_pb2 as pb

log = logging.getLogger("exfilguard.collector.mtls")

INGEST_STREAM = "/exfilguard.v1.Ingest/Stream"
_MAX_PEM_BYTES = 1 << 20
_CRL_CHECK_SECONDS = 1.0  # how stale a revocation may be, at most, before a stream is cut

# Told of every stream refused here: (gRPC status code name, reason); the collector counts them.
Refused = Callable[[str, str], None]


def _ignore(code: str, reason: str) -> None:
    pass


if TYPE_CHECKING:  # generic only in the type stubs
    _Handler = grpc.RpcMethodHandler[Any, Any]


class MtlsError(ExfilGuardError):
    """The TLS files are missing or do not fit together; `key` is the config key (cert, key, ...)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"tls.{key}: {message}")


def _read_pem(key: str, path: str) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise MtlsError(key, f"{path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise MtlsError(key, f"{path}: not a PEM file")
    return data


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials:
    """TLS that requires a client certificate signed by `client_ca`; files checked up front,
    because gRPC itself reports a bad pair only as a failed bind or a failed handshake."""
    cert_pem, key_pem = _read_pem("cert", cert), _read_pem("key", key)
    ca_pem = _read_pem("client_ca", client_ca)
    try:
        server_cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise MtlsError("cert", f"{cert}: not a PEM certificate") from exc
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise MtlsError("key", f"{key}: not an unencrypted PEM private key") from exc
    if private.public_key() != server_cert.public_key():
        raise MtlsError("key", f"{key} is not the key of {cert}")
    try:
        x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise MtlsError("client_ca", f"{client_ca}: not a PEM certificate") from exc
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


class RevocationList:
    """The CA's signed CRL, re-read when the file changes (checked at most once a second)."""

    def __init__(self, crl_path: str | os.PathLike[str], ca_path: str | os.PathLike[str]) -> None:
        self.crl_path = Path(crl_path)
        try:
            self._ca = pki.load_cert(ca_path)
        except pki.PkiError as exc:
            raise MtlsError("client_ca", str(exc)) from exc
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load(initial=True)

    def is_revoked(self, serial: int) -> bool:
        """True if `serial` is on the current CRL."""
        now = time.monotonic()
        if now - self._checked >= _CRL_CHECK_SECONDS:
            with self._lock:
                self._checked = now
                self._load(initial=False)
        return serial in self._serials

    def _load(self, *, initial: bool) -> None:
        try:
            info = self.crl_path.stat()
        except FileNotFoundError:
            if initial:
                log.warning("no revocation list at %s yet: no agent is revoked", self.crl_path)
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            crl = pki.load_crl(self.crl_path, self._ca)
        except pki.PkiError as exc:
            if initial:
                raise MtlsError("crl", str(exc)) from exc
            # Keep the last good list: a half-written or forged file must not un-revoke anyone.
            log.error("revocation list not reloaded, keeping the previous one: %s", exc)
            return
        self._serials = frozenset(r.serial_number for r in crl)
        self._stamp = stamp
        log.info("revocation list loaded: %d revoked certificate(s)", len(self._serials))


def peer_certificate(context: Any) -> x509.Certificate | None:
    """The client certificate of a call (None on a plaintext port or without one)."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    with contextlib.suppress(ValueError):
        return x509.load_pem_x509_certificate(pem[0])
    return None


class AgentAuthInterceptor(grpc.aio.ServerInterceptor):
    """Binds each ingest stream to the agent id in its client certificate (see module doc)."""

    def __init__(self, revocations: RevocationList | None = None, methods: frozenset[str] = frozenset({
        INGEST_STREAM,
    }), refused: Refused = _ignore) -> None:
        self._revocations = revocations
        self._methods = methods
        self._refused = refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        """Wrap the ingest stream's handler; other methods pass through."""
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self._methods:
            return handler
        inner: Any = handler.stream_stream
        if inner is None:
            return handler
        # Both servicer styles are covered: context.read() (through _BoundContext) and the
        # request iterator (through _BoundContext.checked).
        if inspect.isasyncgenfunction(inner):
            async def guarded_gen(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
                bound = await self._authenticate(context)
                async for reply in inner(bound.checked(request_iterator), bound):
                    yield reply

            behavior: Any = guarded_gen
        else:
            async def guarded(request_iterator: Any, context: Any) -> Any:
                bound = await self._authenticate(context)
                return await inner(bound.checked(request_iterator), bound)

            behavior = guarded
        return grpc.stream_stream_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _authenticate(self, context: Any) -> _BoundContext:
        cert = peer_certificate(context)
        if cert is None:
            # Only reachable if the port was opened without require_client_auth.
            self._refused("UNAUTHENTICATED", metrics.NO_CLIENT_CERT)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        assert cert is not None
        agent_id = pki.agent_id_of(cert)
        if agent_id is None:
            log.warning("refused %s: its certificate names no agent", context.peer())
            self._refused("UNAUTHENTICATED", metrics.UNKNOWN_AGENT)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "the client certificate does not name an agent"
            )
        assert agent_id is not None
        if self._revocations is not None and self._revocations.is_revoked(cert.serial_number):
            log.warning("refused agent %s from %s: certificate %x is revoked",
                        agent_id, context.peer(), cert.serial_number)
            self._refused("PERMISSION_DENIED", metrics.CERT_REVOKED)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"the certificate of agent {agent_id} is revoked"
            )
        return _BoundContext(context, agent_id, cert.serial_number, self._revocations, self._refused)


class _BoundContext:
    """The servicer's context, with read() checking what TLS cannot: hello's id and revocation."""

    def __init__(
        self,
        inner: Any,
        agent_id: str,
        serial: int,
        revocations: RevocationList | None,
        refused: Refused = _ignore,
    ) -> None:
        self._inner = inner
        self.agent_id = agent_id
        self._serial = serial
        self._revocations = revocations
        self._refused = refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(self) -> Any:
        """The next request, checked."""
        return await self._check(await self._inner.read())

    async def checked(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The request iterator, each message checked."""
        async for message in requests:
            yield await self._check(message)

    async def _check(self, message: Any) -> Any:
        if self._revocations is not None and self._revocations.is_revoked(self._serial):
            log.warning("cut the stream of agent %s: certificate %x was revoked", self.agent_id, self._serial)
            self._refused("PERMISSION_DENIED", metrics.CERT_REVOKED)
            await self._inner.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"the certificate of agent {self.agent_id} was revoked"
            )
        if isinstance(message, pb.AgentMessage) and message.WhichOneof("body") == "hello":
            claimed = message.hello.agent_id
            if claimed != self.agent_id:
                log.warning("refused %s: hello claims agent %r, certificate is agent %s",
                            self._inner.peer(), claimed[:200], self.agent_id)
                self._refused("PERMISSION_DENIED", metrics.AGENT_MISMATCH)
                await self._inner.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"hello.agent_id {claimed[:200]!r} is not the agent id in the client certificate "
                    f"({self.agent_id})",
                )
        return message
