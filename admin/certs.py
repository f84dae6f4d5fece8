"""`exfilguard certs`: the fleet's CA, the collector's certificate, agent certificates, tokens, revocation.

    exfilguard certs init-ca  --dir D
    exfilguard certs server   --dir D --name collector.example.com [--san 10.0.0.5 ...]
    exfilguard certs agent    --dir D --agent-id ID          # offline issue, key made here
    exfilguard certs token    --dir D [--ttl 24h] [--agent-id ID]   # one-time enrollment token
    exfilguard certs revoke   --dir D --agent-id ID
    exfilguard certs list     --dir D [--json]

Exit codes: 0 done; 2 bad arguments or a PKI error (message names the file or agent id).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable

from collector.tls import pki
from common import units


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `certs init-ca|server|agent|token|revoke|list`."""
    p = sub.add_parser("certs", help="CA, collector and agent certificates, enrollment tokens, revocation")
    certs_sub = p.add_subparsers(dest="certs_command", metavar="CERTS_COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = certs_sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("--dir", default=pki.DEFAULT_DIR,
                       help=f"the PKI directory (default {pki.DEFAULT_DIR})")
        return c

    c = command("init-ca", "create the CA (key 0600) and an empty revocation list")
    c.add_argument("--name", default="ExfilGuard CA", help="the CA's common name")
    c.add_argument("--days", type=_days, default=pki.CA_DAYS, help=f"validity (default {pki.CA_DAYS})")
    c.set_defaults(run=run_init_ca)

    c = command("server", "issue the collector's server certificate (collector.crt / collector.key)")
    c.add_argument("--name", required=True, help="the host name agents use to reach the collector")
    c.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                   help="another DNS name or IP address agents may use (repeatable)")
    c.add_argument("--days", type=_days, default=pki.SERVER_DAYS,
                   help=f"validity (default {pki.SERVER_DAYS})")
    c.set_defaults(run=run_server)

    c = command("agent", "issue an agent's key and client certificate under agents/ (offline install)")
    c.add_argument("--agent-id", required=True, help="the agent id (its state_dir/agent-id file)")
    c.add_argument("--days", type=_days, default=pki.AGENT_DAYS, help=f"validity (default {pki.AGENT_DAYS})")
    c.set_defaults(run=run_agent)

    c = command("token", "make a one-time enrollment token (printed once; only its hash is kept)")
    c.add_argument("--ttl", type=_ttl, default=pki.TOKEN_TTL_SECONDS,
                   help="lifetime: seconds or 30m / 24h / 7d (default 24h)")
    c.add_argument("--agent-id", default=None,
                   help="only this agent id may use it (needed to re-enroll an agent that has a valid cert)")
    c.set_defaults(run=run_token)

    c = command("revoke", "revoke every certificate of an agent (the collector rejects it at once)")
    c.add_argument("--agent-id", required=True)
    c.set_defaults(run=run_revoke)

    c = command("list", "list the agent certificates issued, with their state")
    c.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    c.set_defaults(run=run_list)


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError("expected a number of days between 1 and 36500")
    return int(text)


def _ttl(text: str) -> int:
    try:  # seconds, or common.units' durations (24h); whole seconds, at least one
        return max(1, round(units.duration(text, maximum=pki.MAX_TOKEN_TTL_SECONDS)))
    except units.UnitError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from exc


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    print(f"exfilguard certs {args.certs_command}: {exc}", file=sys.stderr)
    return 2


def _issue(
    args: argparse.Namespace,
    role: str,
    issue: Callable[[pki.CertificateAuthority], pki.Issued],
    notes: Callable[[pki.Issued], tuple[str, str]] = lambda issued: ("", ""),
) -> int:
    """Issue with the CA in --dir and print where the certificate and key went (with notes)."""
    try:
        issued = issue(pki.CertificateAuthority(args.dir))
    except pki.PkiError as exc:
        return _fail(args, exc)
    cert_note, key_note = notes(issued)
    label = f"{role} certificate:"
    print(f"{label} {issued.cert_path}{cert_note}")
    print(f"{f'{role} key:'.ljust(len(label))} {issued.key_path}{key_note}")
    return 0


def run_init_ca(args: argparse.Namespace) -> int:
    """Create the CA."""
    cert_note = " (give this file to every agent as tls.ca)"
    key_note = " (mode 0600; keep it on the collector host only)"
    return _issue(args, "CA", lambda ca: ca.init_ca(args.name, args.days), lambda _: (cert_note, key_note))


def run_server(args: argparse.Namespace) -> int:
    """Issue the collector's certificate."""
    return _issue(args, "server", lambda ca: ca.issue_server(args.name, args.san, args.days))


def run_agent(args: argparse.Namespace) -> int:
    """Issue an agent certificate offline."""
    return _issue(
        args, "agent", lambda ca: ca.issue_agent(args.agent_id, args.days),
        lambda issued: (f" (serial {issued.cert.serial_number:x})", ""),
    )


def run_token(args: argparse.Namespace) -> int:
    """Print a new one-time token (stdout: the token alone, so scripts can capture it)."""
    try:
        token = pki.CertificateAuthority(args.dir).create_token(args.ttl, args.agent_id)
    except pki.PkiError as exc:
        return _fail(args, exc)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.ttl)
    print(token)
    bound = f" for agent {args.agent_id}" if args.agent_id else ""
    print(f"one-time token{bound}, valid until {expires:%Y-%m-%d %H:%M:%S} UTC; set it as "
          "tls.enrollment_token in agent.yaml", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke an agent's certificates."""
    try:
        serials = pki.CertificateAuthority(args.dir).revoke_agent(args.agent_id)
    except pki.PkiError as exc:
        return _fail(args, exc)
    print(f"revoked {len(serials)} certificate(s) of agent {args.agent_id}: "
          + ", ".join(format(s, "x") for s in serials))
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Table (or JSON Lines) of issued agent certificates."""
    try:
        rows = pki.CertificateAuthority(args.dir).issued()
    except pki.PkiError as exc:
        return _fail(args, exc)
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    print(f"{'AGENT ID':<38} {'SERIAL':<42} {'STATE':<8} NOT AFTER")
    for row in rows:
        print(f"{row['agent_id']:<38} {row['serial']:<42} {row['state']:<8} {row['not_after']}")
    return 0
