"""`exfilguard key export`: print the collector's Ed25519 public key (PEM) for auditors.

Exit codes: 0 printed / written; 2 configuration or key error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from collector import config as collector_config
from collector.evidence import keys
from collector.store import StoreError, open_store
from common.errors import ExfilGuardError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `key export`."""
    p = sub.add_parser("key", help="the collector's evidence signing key")
    key_sub = p.add_subparsers(dest="key_command", metavar="KEY_COMMAND", required=True)
    e = key_sub.add_parser("export", help="print the public key (PEM) that verifies export manifests")
    e.add_argument(
        "--config", default=None, help="collector.yaml (default $EXFILGUARD_CONFIG or /etc/exfilguard)"
    )
    e.add_argument("--out", help="write to this file instead of stdout")
    e.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Print or write the public key."""
    try:
        cfg = collector_config.load(args.config or collector_config.default_path())
        public = keys.public_key(cfg.state_dir)
        if args.out:
            Path(args.out).write_bytes(public.pem())
        else:
            sys.stdout.write(public.pem().decode())
    except (ExfilGuardError, OSError) as exc:
        print(f"exfilguard key export: {exc}", file=sys.stderr)
        return 2
    print(f"fingerprint (SHA-256 of the raw key): {public.fingerprint()}", file=sys.stderr)
    for name, fingerprint in _other_keys(cfg.store, public.fingerprint()):
        print(
            f"exfilguard key export: warning: collector {name} of this fleet signs with key {fingerprint}: "
            "its exports do not verify against this key (docs/deploy.md: one signing key per fleet)",
            file=sys.stderr,
        )
    return 0


def _other_keys(store_location: str, mine: str) -> list[tuple[str, str]]:
    """(collector, fingerprint) of the fleet's collectors (as their leases say) that sign with another key."""
    try:
        store = open_store(store_location, readonly=True)
    except StoreError:
        return []  # no store yet, or not reachable from here: nothing to compare with
    try:
        return [(c.name, c.signing_key) for c in store.fleet_collectors() if c.signing_key not in ("", mine)]
    except StoreError:
        return []
    finally:
        store.close()
