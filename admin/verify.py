"""`exfilguard verify EXPORT`: check an export offline against its manifest and the collector's public key.

Exit codes:
  0  verified: signature by the given public key, file SHA-256, every record's chain link,
     order, and the per-agent counts and chain heads in the manifest
  1  verification failed: the first altered, missing or out-of-order record is named
  2  usage or I/O error (file missing or unreadable, not a manifest, bad key file)
  3  the export matches its manifest, but no --public-key was given: the signature was
     checked only against the key embedded in the manifest (fingerprint printed); compare it
     with the collector's key (`exfilguard key export`) or pass --public-key
"""

from __future__ import annotations

import argparse
import json
import sys

from admin import terminal
from collector.evidence import verify as verifier
from collector.evidence.keys import PublicKey
from common.errors import ExfilGuardError

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_UNTRUSTED_KEY = 0, 1, 2, 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `verify`."""
    what = "verify an export offline (signature, file hash, hash chain)"
    p = terminal.command(sub, "verify", what, __doc__)
    p.add_argument("export", metavar="EXPORT", help="the CSV or JSON Lines export")
    p.add_argument("--manifest", help="manifest (default: EXPORT.manifest.json)")
    p.add_argument("--public-key", help="the collector's public key, PEM (from `exfilguard key export`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Verify; see the module docstring for exit codes."""
    try:
        key = PublicKey.load(args.public_key) if args.public_key else None
        report = verifier.verify(args.export, args.manifest, key)
    except (ExfilGuardError, OSError) as exc:
        print(f"exfilguard verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    code = (EXIT_OK if report.key_trusted else EXIT_UNTRUSTED_KEY) if report.ok else EXIT_FAILED
    if args.json:
        doc = {
            "ok": report.ok,
            "exit_code": code,
            "rows": report.rows,
            "signer_fingerprint": report.signer_fingerprint,
            "key_trusted": report.key_trusted,
            "problems": [p.to_dict() for p in report.problems],
            "problems_dropped": report.problems_dropped,
        }
        print(json.dumps(doc, indent=2))
        return code
    if report.ok:
        print(f"OK: {report.rows} records verified; signed by key {report.signer_fingerprint}")
        if not report.key_trusted:
            print(
                "WARNING: no --public-key given; the signature was checked against the key inside the"
                " manifest only. Compare the fingerprint above with the collector's key.",
                file=sys.stderr,
            )
        return code
    first = report.first
    print(f"FAILED: {first}")
    for problem in report.problems[1:20]:
        print(f"  also: {problem}")
    more = len(report.problems) - 20 + report.problems_dropped
    if more > 0:
        print(f"  ... and {more} more")
    return code
