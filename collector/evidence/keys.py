"""The collector's Ed25519 signing key: created on first start in the state dir, never logged.

Layout under `<state_dir>/evidence/`: `signing.key` (PKCS#8 PEM, mode 0600, directory 0700) and
`signing.pub` (SubjectPublicKeyInfo PEM, the file auditors get with `exfilguard key export`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from collector.evidence.errors import SigningKeyError
from common.files import read_limited

KEY_FILE = "signing.key"
PUBLIC_FILE = "signing.pub"
_MAX_KEY_FILE = 16 << 10  # a PEM Ed25519 key is ~120 bytes; refuse anything absurd


def key_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Where the signing key lives inside the collector's state dir."""
    return Path(state_dir) / "evidence"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key that checks manifest signatures."""

    key: Ed25519PublicKey

    def raw(self) -> bytes:
        """The 32 raw key bytes."""
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def fingerprint(self) -> str:
        """SHA-256 of the raw key, hex: short enough to read out over the phone."""
        return hashlib.sha256(self.raw()).hexdigest()

    def pem(self) -> bytes:
        """The key as SubjectPublicKeyInfo PEM."""
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def b64(self) -> str:
        """The raw key in base64 (as embedded in manifests)."""
        return base64.b64encode(self.raw()).decode()

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is this key's signature over `data`."""
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        """A key from its base64 raw form; raises ValueError on anything else."""
        raw = base64.b64decode(text, validate=True)
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Read a PEM public key file (or a PEM private key, whose public half is used)."""
        data = _read(Path(path))
        try:
            if b"PRIVATE KEY" in data:
                private = serialization.load_pem_private_key(data, password=None)
                if not isinstance(private, Ed25519PrivateKey):
                    raise SigningKeyError(str(path), "not an Ed25519 key")
                return cls(private.public_key())
            public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise SigningKeyError(str(path), f"not a PEM key: {exc}") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise SigningKeyError(str(path), "not an Ed25519 key")
        return cls(public)


@dataclass(frozen=True)
class SigningKey:
    """The collector's private Ed25519 key."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature over `data`."""
        return self.key.sign(data)


def load_or_create(state_dir: str | os.PathLike[str]) -> SigningKey:
    """The key in `state_dir`, created (0600, atomically) when there is none yet.

    The collector calls this at start; export calls it too so a fresh install can sign.
    """
    directory = key_dir(state_dir)
    path = directory / KEY_FILE
    if path.exists():
        return _load(path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # O_EXCL: two processes starting at once must not overwrite each other's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path)
    except OSError as exc:
        raise SigningKeyError(str(path), f"cannot create key: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    signing = SigningKey(key)
    public_path = directory / PUBLIC_FILE
    public_path.write_bytes(signing.public.pem())
    public_path.chmod(0o644)
    _own_like(directory.parent, [directory, path, public_path])
    return signing


def public_key(state_dir: str | os.PathLike[str]) -> PublicKey:
    """The public key of the collector whose state dir this is (created with the key if needed)."""
    return load_or_create(state_dir).public


def _load(path: Path) -> SigningKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # A signing key others can read proves nothing; refuse rather than sign with it.
        raise SigningKeyError(str(path), f"mode {mode:o} lets others read the key; chmod 600 it")
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise SigningKeyError(str(path), "not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(str(path), "not an Ed25519 key")
    return SigningKey(key)


def _read(path: Path) -> bytes:
    return read_limited(path, _MAX_KEY_FILE, SigningKeyError, too_large="file too large for a key")


def _own_like(parent: Path, paths: list[Path]) -> None:
    """When root creates the key for a collector that runs as its own user, hand the files over."""
    if os.geteuid() != 0:
        return
    owner = parent.stat()
    if owner.st_uid == 0:
        return
    for p in paths:
        with contextlib.suppress(OSError):
            os.chown(p, owner.st_uid, owner.st_gid)
