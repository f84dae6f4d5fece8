"""The signed manifest written beside every export (FILE.manifest.json).

The signature is Ed25519 over `canonical(manifest without "signature")`: JSON with sorted keys,
no spaces, UTF-8, so any edit of any field, including the embedded signer key, breaks it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from typing import Any

from collector import __version__
from collector.evidence import formats
from collector.evidence.errors import ManifestError
from collector.evidence.export import ExportResult
from collector.evidence.keys import PublicKey, SigningKey
from common.ecstime import ecs_now
from common.files import read_limited

VERSION = 1
SUFFIX = ".manifest.json"
_MAX_MANIFEST = 64 << 20  # one entry per agent; a fleet of 100k agents stays well below
CHAIN_FORMULA = (
    "record = SHA-256(canonical JSON of the event: sorted keys, no spaces, UTF-8, without "
    "exfilguard.chain.* and exfilguard.export.*); link = SHA-256(prev link || record); "
    "the first link of an agent follows 32 zero bytes"
)


def path_for(export_path: str | os.PathLike[str]) -> Path:
    """Where the manifest of an export file lives."""
    p = Path(export_path)
    return p.with_name(p.name + SUFFIX)


def canonical(doc: dict[str, Any]) -> bytes:
    """The signed bytes: the manifest without its signature, canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build(
    result: ExportResult,
    export_name: str,
    filter_doc: dict[str, Any],
    key: SigningKey,
    *,
    checkpoints: dict[str, dict[str, Any]] | None = None,
    unchained: int = 0,
) -> dict[str, Any]:
    """The signed manifest of one export."""
    agents = []
    for agent in result.agents:
        entry = agent.to_dict()
        if checkpoints and agent.agent_id in checkpoints:
            entry["checkpoint"] = checkpoints[agent.agent_id]
        agents.append(entry)
    doc: dict[str, Any] = {
        "manifest_version": VERSION,
        "created": ecs_now(),
        "collector": {"version": __version__, "host": socket.gethostname()},
        "export": {
            "file": export_name,
            "format": result.format,
            "sha256": result.sha256,
            "bytes": result.bytes,
        },
        "filter": filter_doc,
        "rows": result.rows,
        "time_range": {"first": result.first_time, "last": result.last_time},
        "agents": agents,
        "store_chain_breaks": {"count": result.store_breaks, "first": result.first_breaks},
        # Events stored above a hole (a predecessor not received yet) are not chained, so not exported.
        "unchained_skipped": unchained,
        "chain": {"formula": CHAIN_FORMULA},
    }
    if result.format == "csv":
        doc["csv"] = {
            "record_column": formats.RECORD,
            "formula_triggers": list(formats.FORMULA_TRIGGERS),
            "neutraliser": formats.NEUTRALISER,
        }
    return sign(doc, key)


def sign(doc: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """A copy of `doc` naming `key` as signer and carrying its signature."""
    signed = {k: v for k, v in doc.items() if k != "signature"}
    signed["signer"] = {
        "algorithm": "Ed25519",
        "public_key": key.public.b64(),
        "fingerprint": key.public.fingerprint(),
    }
    signed["signature"] = base64.b64encode(key.sign(canonical(signed))).decode()
    return signed


def write(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the manifest atomically (indented: auditors read it)."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        with partial.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(target)
    except OSError as exc:
        raise ManifestError(str(target), f"cannot write: {exc.strerror}") from exc


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a manifest; raises ManifestError when it is unreadable or not a manifest."""
    p = Path(path)
    data = read_limited(p, _MAX_MANIFEST, ManifestError, too_large="too large for a manifest")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # not JSON or not UTF-8; a 5000-digit number; deep nesting
        raise ManifestError(str(p), f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("manifest_version") != VERSION:
        raise ManifestError(str(p), f"not an ExfilGuard export manifest (version {VERSION})")
    return doc


def signature_valid(doc: dict[str, Any], key: PublicKey) -> bool:
    """True when the manifest carries `key`'s valid signature over its canonical bytes."""
    value = doc.get("signature")
    if not isinstance(value, str):
        return False
    try:
        signature = base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return key.verifies(signature, canonical(doc))


def embedded_key(doc: dict[str, Any]) -> PublicKey | None:
    """The signer key the manifest names (only trustworthy once compared with a known key)."""
    signer = doc.get("signer")
    if not isinstance(signer, dict) or not isinstance(signer.get("public_key"), str):
        return None
    try:
        return PublicKey.from_b64(signer["public_key"])
    except ValueError:
        return None
