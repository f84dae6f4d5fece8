"""How an agent's identity travels in X.509, shared by the collector's CA and the agent.

An agent certificate names the agent id twice, as subject CN and as the URI SAN
`urn:exfilguard:agent:<id>`; only a certificate where both agree identifies an agent.
Keys are ECDSA P-256 (small, fast, and supported by gRPC's TLS stack).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

AGENT_URI_PREFIX = "urn:exfilguard:agent:"
AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a UUID fits; safe as a file name


def agent_id_of(cert: x509.Certificate) -> str | None:
    """The agent id a client certificate is bound to: CN and URI SAN must agree, else None."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u[len(AGENT_URI_PREFIX):] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(AGENT_URI_PREFIX)]
    if len(cns) != 1 or len(uris) != 1 or cns[0].value != uris[0] or not AGENT_ID.match(uris[0]):
        return None
    return uris[0]


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file mode protects it; services cannot type passphrases)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(agent_id: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM request an enrolling agent sends: CN = its agent id, signed with its own key."""
    if not AGENT_ID.match(agent_id):
        raise ValueError(f"not an agent id: {agent_id[:140]!r}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the first byte (no window where a key is world-readable)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly `mode`, whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _own_like_directory(tmp)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _own_like_directory(path: Path) -> None:
    # Root runs `exfilguard certs` but the collector (user exfilguard) must read what it wrote.
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    if parent.st_uid != 0 or parent.st_gid != 0:
        os.chown(path, parent.st_uid, parent.st_gid)
