"""The fleet's certificate authority: CA, collector certificate, agent certificates, CRL, tokens.

One directory holds it all (`exfilguard certs --dir D`, default /var/lib/exfilguard/pki):

    ca.crt  ca.key                 the CA (key 0600; only this host ever holds it)
    collector.crt  collector.key   the collector's server certificate
    agents/<agent-id>.crt|.key     client certificates issued by `certs agent`
    issued.json                    every agent certificate issued: serial, agent id, expiry
    crl.pem                        the signed revocation list the collector checks
    tokens.json                    one-time enrollment tokens, as SHA-256 hashes only

An agent certificate carries the agent id twice: as subject CN and as the URI SAN
`urn:exfilguard:agent:<id>`; the collector trusts only the pair, so an agent cannot send
as another. Keys are ECDSA P-256: small, fast, and supported by gRPC's TLS stack.

Errors (all subclasses of PkiError, each with the fields it names):
    PkiFileError      a file of the directory is missing, unreadable or malformed (path)
    AgentIdError      an agent id is not acceptable (agent_id)
    TokenError        an enrollment token is unknown, used or expired (reason)
    CsrError          a certificate request is malformed or its signature is wrong
    EnrolledError     the agent id already holds a valid certificate (agent_id)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.agentcert import (
    AGENT_ID,
    AGENT_URI_PREFIX,
    agent_id_of,
    cert_pem,
    key_pem,
    make_csr,
    new_key,
    write_file,
)
from common.errors import ExfilGuardError, PathError
from common.files import read_limited

__all__ = ["agent_id_of", "cert_pem", "key_pem", "make_csr", "new_key", "write_file"]

DEFAULT_DIR = "/var/lib/exfilguard/pki"
CA_DAYS = 3650
SERVER_DAYS = 825
AGENT_DAYS = 365
TOKEN_TTL_SECONDS = 24 * 3600
MAX_TOKEN_TTL_SECONDS = 30 * 86400
MAX_CSR_BYTES = 16 << 10
MAX_STATE_FILE_BYTES = 16 << 20  # issued.json / tokens.json / crl.pem: a fleet, not a denial of service
_CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start a little in the past: agents' clocks drift


class PkiError(ExfilGuardError):
    """Root of the PKI errors."""


class PkiFileError(PkiError, PathError):
    """A file of the PKI directory is missing, unreadable or malformed."""


class AgentIdError(PkiError):
    """An agent id that cannot go into a certificate (or a file name)."""

    def __init__(self, agent_id: str, message: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"agent id {agent_id[:140]!r}: {message}")


class TokenError(PkiError):
    """An enrollment token that cannot be redeemed; reason is unknown, used, expired or bound."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class CsrError(PkiError):
    """A certificate signing request that is malformed or not self-signed correctly."""


class EnrolledError(PkiError):
    """The agent id already has a valid certificate; re-enrolling it needs a token bound to it."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(
            f"agent {agent_id} already holds a valid certificate; revoke it or issue a token bound to "
            "this agent id (certs token --agent-id)"
        )


def check_agent_id(agent_id: str) -> str:
    """Return `agent_id` if it is safe as a CN, URI and file name; else AgentIdError."""
    if not AGENT_ID.match(agent_id):
        raise AgentIdError(agent_id, "expected 1-128 letters, digits, '.', '_' or '-' (a UUID fits)")
    return agent_id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _read_bounded(path: Path) -> bytes:
    too_large = f"larger than {MAX_STATE_FILE_BYTES} bytes"
    return read_limited(path, MAX_STATE_FILE_BYTES, PkiFileError, too_large=too_large, cannot_read="")


def load_cert(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load a PEM certificate, translating errors to PkiFileError."""
    data = _read_bounded(Path(path))
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiFileError(path, f"not a PEM certificate ({exc})") from exc


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read_bounded(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiFileError(path, "not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiFileError(path, "expected an EC private key")
    return key


@dataclass(frozen=True)
class Issued:
    """A certificate this CA issued, and where its files went."""

    cert: x509.Certificate
    cert_path: Path | None = None
    key_path: Path | None = None


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """The CA signs certificates and CRLs only; a collector or agent certificate signs TLS
    handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


class CertificateAuthority:
    """The PKI directory: issues, revokes and records certificates, and keeps enrollment tokens."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.ca_cert_path = self.directory / "ca.crt"
        self.ca_key_path = self.directory / "ca.key"
        self.crl_path = self.directory / "crl.pem"
        self.issued_path = self.directory / "issued.json"
        self.tokens_path = self.directory / "tokens.json"
        self.agents_dir = self.directory / "agents"
        self.server_cert_path = self.directory / "collector.crt"
        self.server_key_path = self.directory / "collector.key"

    # ------------------------------------------------------------------ CA

    def init_ca(self, common_name: str = "ExfilGuard CA", days: int = CA_DAYS) -> Issued:
        """Create the CA key, certificate and an empty CRL; refuses to replace an existing CA."""
        if self.ca_key_path.exists() or self.ca_cert_path.exists():
            raise PkiFileError(self.ca_cert_path, "a CA already exists here; remove it first to start over")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise PkiFileError(self.directory, exc.strerror or str(exc)) from exc
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_file(self.ca_key_path, key_pem(key), 0o600)
        write_file(self.ca_cert_path, cert_pem(cert), 0o644)
        with self._locked():
            self._write_crl(cert, key, [])
        return Issued(cert, self.ca_cert_path, self.ca_key_path)

    def ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA certificate and key (PkiFileError if `init-ca` was not run here)."""
        return load_cert(self.ca_cert_path), _load_key(self.ca_key_path)

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        *,
        sans: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.Certificate:
        ca_cert, ca_key = self.ca()
        # Never outlive the CA: a chain with an expired root fails anyway, and confusingly.
        not_after = min(not_after, ca_cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            # One purpose per certificate: an agent's cert cannot serve as a collector and back.
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

    # ------------------------------------------------------------- server

    def issue_server(self, name: str, sans: Sequence[str] = (), days: int = SERVER_DAYS) -> Issued:
        """The collector's certificate for host `name` (+ extra DNS names / IP addresses)."""
        general = [_general_name(s) for s in dict.fromkeys([name, *sans])]
        key = new_key()
        now = _now()
        cert = self._sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]), key.public_key(), sans=general,
            usage=ExtendedKeyUsageOID.SERVER_AUTH, not_before=now - _CLOCK_SKEW,
            not_after=now + dt.timedelta(days=days),
        )
        write_file(self.server_key_path, key_pem(key), 0o600)
        write_file(self.server_cert_path, cert_pem(cert), 0o644)
        return Issued(cert, self.server_cert_path, self.server_key_path)

    # -------------------------------------------------------------- agents

    def issue_agent(
        self,
        agent_id: str,
        days: int = AGENT_DAYS,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """Key and client certificate for `agent_id`, written under agents/ (for offline installs)."""
        check_agent_id(agent_id)
        key = new_key()
        with self._locked():
            cert = self._sign_agent(agent_id, key.public_key(), days, not_before, not_after)
        try:
            self.agents_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise PkiFileError(self.agents_dir, exc.strerror or str(exc)) from exc
        key_path = self.agents_dir / f"{agent_id}.key"
        cert_path = self.agents_dir / f"{agent_id}.crt"
        write_file(key_path, key_pem(key), 0o600)
        write_file(cert_path, cert_pem(cert), 0o644)
        return Issued(cert, cert_path, key_path)

    def _sign_agent(
        self,
        agent_id: str,
        public_key: ec.EllipticCurvePublicKey,
        days: int,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> x509.Certificate:
        now = _now()
        start = not_before or now - _CLOCK_SKEW
        # Callers hold the lock: the record must land in the same critical section as any
        # token check, or two tokens could enroll the same new agent id at once.
        cert = self._sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]), public_key,
            sans=[x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH, not_before=start,
            not_after=not_after or now + dt.timedelta(days=days),
        )
        issued = self._read_json(self.issued_path, [])
        issued.append({
            "serial": format(cert.serial_number, "x"),
            "agent_id": agent_id,
            "not_after": cert.not_valid_after_utc.isoformat(),
            "issued_at": now.isoformat(),
        })
        self._write_json(self.issued_path, issued)
        return cert

    def sign_enrollment(self, token: str, csr_pem: bytes, days: int = AGENT_DAYS) -> x509.Certificate:
        """Redeem a one-time token for a certificate on the CSR's key; the CSR's CN is the agent id."""
        csr = _parse_csr(csr_pem)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or not isinstance(cns[0].value, str):
            raise CsrError("the request must name exactly one agent id as its CN")
        agent_id = check_agent_id(cns[0].value)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise CsrError("the request's key must be ECDSA P-256")
        with self._locked():
            # Burn the token before anything can fail later: a token is one attempt, never two.
            self._redeem(token, agent_id)
            return self._sign_agent(agent_id, public_key, days)

    def revoke_agent(self, agent_id: str) -> list[int]:
        """Revoke every certificate issued to `agent_id`; returns their serials and rewrites the CRL."""
        check_agent_id(agent_id)
        ca_cert, ca_key = self.ca()
        with self._locked():
            issued = self._read_json(self.issued_path, [])
            serials = [int(e["serial"], 16) for e in issued if e.get("agent_id") == agent_id]
            if not serials:
                raise AgentIdError(agent_id, f"no certificate was issued to it by {self.directory}")
            current = self._crl_entries()
            for serial in serials:
                current.setdefault(serial, _now())
            self._write_crl(ca_cert, ca_key, sorted(current.items()))
        return serials

    def revoked_serials(self) -> set[int]:
        """Serials on the current CRL."""
        return set(self._crl_entries())

    def _crl_entries(self) -> dict[int, dt.datetime]:
        if not self.crl_path.exists():
            return {}
        crl = load_crl(self.crl_path, load_cert(self.ca_cert_path))
        return {r.serial_number: r.revocation_date_utc for r in crl}

    def _write_crl(
        self, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
        entries: Sequence[tuple[int, dt.datetime]],
    ) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject).last_update(now - _CLOCK_SKEW)
            # The collector reads this file, not a URL; next_update is informative only.
            .next_update(now + dt.timedelta(days=30))
        )
        for serial, when in entries:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        write_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)

    def has_valid_cert(self, agent_id: str) -> bool:
        """True if an unrevoked, unexpired certificate was issued to `agent_id`."""
        revoked = self.revoked_serials()
        now = _now()
        return any(
            e.get("agent_id") == agent_id
            and int(e["serial"], 16) not in revoked
            and dt.datetime.fromisoformat(e["not_after"]) > now
            for e in self._read_json(self.issued_path, [])
        )

    def issued(self) -> list[dict[str, str]]:
        """Every agent certificate issued, with state valid, expired or revoked (for `certs list`)."""
        revoked = self.revoked_serials()
        now = _now()
        rows = []
        for entry in self._read_json(self.issued_path, []):
            if int(entry["serial"], 16) in revoked:
                state = "revoked"
            elif dt.datetime.fromisoformat(entry["not_after"]) <= now:
                state = "expired"
            else:
                state = "valid"
            rows.append({**{k: str(v) for k, v in entry.items()}, "state": state})
        return rows

    # -------------------------------------------------------------- tokens

    def create_token(self, ttl_seconds: int = TOKEN_TTL_SECONDS, agent_id: str | None = None) -> str:
        """A one-time enrollment token (shown once; only its SHA-256 is stored), optionally bound."""
        if not 0 < ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            raise TokenError("ttl", f"a token lives between 1 second and {MAX_TOKEN_TTL_SECONDS} seconds")
        if agent_id is not None:
            check_agent_id(agent_id)
        self.ca()  # a token is useless without a CA to sign with: fail now, not at enrollment
        token = "egt_" + secrets.token_urlsafe(32)
        with self._locked():
            tokens = self._read_json(self.tokens_path, {})
            now = _now()
            # Forget tokens that expired a week ago, so the file stays small on a busy fleet.
            tokens = {h: t for h, t in tokens.items()
                      if dt.datetime.fromisoformat(t["expires"]) > now - dt.timedelta(days=7)}
            tokens[_token_hash(token)] = {
                "created": now.isoformat(),
                "expires": (now + dt.timedelta(seconds=ttl_seconds)).isoformat(),
                "agent_id": agent_id,
                "used": None,
            }
            self._write_json(self.tokens_path, tokens)
        return token

    def _redeem(self, token: str, agent_id: str) -> None:
        tokens = self._read_json(self.tokens_path, {})
        entry = tokens.get(_token_hash(token)) if len(token) <= 256 else None
        if entry is None:
            raise TokenError("unknown", "the enrollment token is not known to this collector")
        if entry.get("used"):
            raise TokenError("used", "the enrollment token was already used")
        if dt.datetime.fromisoformat(entry["expires"]) <= _now():
            raise TokenError("expired", "the enrollment token has expired; ask for a new one")
        bound = entry.get("agent_id")
        if bound is not None and bound != agent_id:
            raise TokenError("bound", "the enrollment token was issued for another agent id")
        if bound is None and self.has_valid_cert(agent_id):
            # Otherwise any token holder could enroll under an existing agent's id and send as it.
            raise EnrolledError(agent_id)
        entry["used"] = {"at": _now().isoformat(), "agent_id": agent_id}
        self._write_json(self.tokens_path, tokens)

    # ------------------------------------------------------------- storage

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock file for tokens, issued and the CRL: the CLI and the collector both write them.
        try:
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PkiFileError(self.directory, exc.strerror or str(exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_json(self, path: Path, empty: Any) -> Any:
        if not path.exists():
            return empty
        try:
            value = json.loads(_read_bounded(path))
        except ValueError as exc:
            raise PkiFileError(path, f"not valid JSON ({exc})") from exc
        if type(value) is not type(empty):
            raise PkiFileError(path, f"expected a JSON {type(empty).__name__}")
        return value

    def _write_json(self, path: Path, value: Any) -> None:
        write_file(path, json.dumps(value, indent=1, sort_keys=True).encode(), 0o600)


def load_crl(path: str | os.PathLike[str], ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Load a PEM CRL and check the CA signed it (a forged CRL could un-revoke an agent)."""
    data = _read_bounded(Path(path))
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise PkiFileError(path, f"not a PEM CRL ({exc})") from exc
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public_key):
        raise PkiFileError(path, "the CRL is not signed by the CA")
    return crl


def _parse_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrError(f"the request is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature) as exc:
        raise CsrError(f"not a PEM certificate request ({exc})") from exc
    if not valid:
        raise CsrError("the request's signature does not match its key")
    return csr


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _general_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$", value):
        raise PkiError(f"{value!r} is neither an IP address nor a DNS name")
    return x509.DNSName(value)
