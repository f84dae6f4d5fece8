"""`exfilguard exception`: time-boxed prevention exceptions an officer grants, signed and pushed.

    exfilguard exception grant --host H --user U [--device SERIAL] --for 2h --note TEXT [--by NAME]
    exfilguard exception list [--host H] [--all] [--json]       active grants (--all: every one)
    exfilguard exception revoke ID [--by NAME]

A grant lets user U on host H copy tagged data to removable media (only to the device with
serial SERIAL, when given) although prevent.removable_writes is block, until the time is up.
It is recorded in the collector's store (who granted it, when, why), signed with the
collector's evidence key, and pushed to H's agent within seconds; the agent honours it only
while the signature verifies, and reports every copy it lets through as `file.allow` naming the
grant (docs/prevention.md). A revoked or expired grant leaves the push; the agent stops
honouring it at its end on its own. Run where the collector's state directory is readable (it
signs). Exit codes: 0 done, 1 store error, 2 usage, config or key error, 3 nothing to revoke.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import secrets
from typing import Any

import pydantic

from admin import terminal
from admin.alerts import invoking_user
from admin.configured import EXIT_USAGE, load_configured, with_store
from admin.terminal import clean, fail, print_json, store_options, table
from collector.evidence import keys
from collector.store import Store
from collector.store.grants import GrantRecord
from common import grants, units
from common.agentconfig import PreventException
from common.ecstime import ecs_now, ecs_time
from common.errors import ExfilGuardError

EXIT_NOTHING = 3
MAX_GRANT_SECONDS = 30 * 86400.0  # a month: longer is a policy (prevent.allowed_users), not an exception
_COLUMNS = ("ID", "HOST", "USER", "DEVICE", "UNTIL", "GRANTED BY", "STATE", "NOTE")


def register(subparsers: Any) -> None:
    """Add `exception grant|list|revoke`."""
    parser = terminal.command(subparsers, "exception", "grant, list and revoke prevention exceptions",
                              __doc__)
    sub = parser.add_subparsers(dest="exception_command", metavar="grant|list|revoke", required=True)
    grant = sub.add_parser("grant", help="let one user copy tagged data to removable media for a while")
    grant.add_argument("--host", required=True, help="the workstation's host name")
    grant.add_argument("--user", required=True, help="the user name on it")
    grant.add_argument("--device", default="", metavar="SERIAL", help="only onto this device")
    grant.add_argument("--for", dest="period", required=True, metavar="DURATION", help="how long (2h)")
    grant.add_argument("--note", required=True, help="why (a ticket; shown in the alerts)")
    grant.add_argument("--by", default=None, metavar="NAME",
                       help="the officer (default: $SUDO_USER or your login name)")
    store_options(grant, default=None)
    grant.set_defaults(run=run_grant)
    listing = sub.add_parser("list", help="the grants in force (--all: also revoked and expired ones)")
    listing.add_argument("--host", default=None, help="of this host only")
    listing.add_argument("--all", action="store_true", help="every grant ever made")
    store_options(listing, default=None)
    listing.set_defaults(run=run_list)
    revoke = sub.add_parser("revoke", help="end a grant now")
    revoke.add_argument("grant_id", metavar="ID")
    revoke.add_argument("--by", default=None, metavar="NAME",
                        help="the officer (default: $SUDO_USER or your login name)")
    store_options(revoke, default=None)
    revoke.set_defaults(run=run_revoke)


def run_grant(args: argparse.Namespace) -> int:
    """Record, sign and (through the collector) push one grant."""
    config = load_configured("exception", args.config)
    try:
        seconds = units.duration(args.period, "--for", maximum=MAX_GRANT_SECONDS, plain_seconds=False)
        key = keys.load_or_create(config.state_dir)
    except ExfilGuardError as exc:  # UnitError, SigningKeyError
        return fail("exception", str(exc), EXIT_USAGE)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    fields = {"id": f"G-{secrets.token_hex(4)}", "host": args.host.strip().lower(), "user": args.user,
              "device": args.device, "until": ecs_time(now + dt.timedelta(seconds=seconds)),
              "note": args.note, "granted_by": args.by or invoking_user()}
    try:  # the agent's own limits: a grant it could not load must not be made
        PreventException.model_validate(fields)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        return fail("exception", f"{'.'.join(map(str, err['loc']))}: {err['msg']}", EXIT_USAGE)
    if not fields["host"] or not fields["note"].strip():
        return fail("exception", "--host and --note must not be empty", EXIT_USAGE)
    signature = base64.b64encode(key.sign(grants.signed_bytes(fields))).decode()
    record = GrantRecord(fields["id"], fields["host"], fields["user"], fields["device"],
                         fields["granted_by"], fields["note"], ecs_time(now), fields["until"],
                         signature=signature)

    def work(store: Store) -> int:
        store.add_grant(record)
        if args.json:
            print_json(record.as_dict())
        else:
            onto = f" onto device {clean(record.device)}" if record.device else ""
            print(f"granted {record.id}: {clean(record.user)} on {clean(record.host)} may copy tagged data"
                  f"{onto} until {record.until[:19]}Z (by {clean(record.granted_by)}); the collector "
                  "pushes it to the host's agent within seconds")
        return 0

    return with_store("exception", args.config, work, readonly=False)


def run_list(args: argparse.Namespace) -> int:
    """The grants in force, or every grant with --all."""

    def work(store: Store) -> int:
        now = ecs_now()
        found = store.grants(host=args.host, active_at=None if args.all else now)
        if args.json:
            print_json([{**g.as_dict(), "state": _state(g, now)} for g in found])
            return 0
        rows = [_COLUMNS] + [
            (g.id, clean(g.host), clean(g.user), clean(g.device) or "any", g.until[:19] + "Z",
             clean(g.granted_by), _state(g, now), clean(g.note))
            for g in found
        ]
        print(table(rows) + ("(no grants)\n" if not found else ""), end="")
        return 0

    return with_store("exception", args.config, work, readonly=True)


def run_revoke(args: argparse.Namespace) -> int:
    """End a grant now: it leaves the host's push at once."""

    def work(store: Store) -> int:
        revoked = store.revoke_grant(args.grant_id, ecs_now(), args.by or invoking_user())
        if revoked is None:
            return fail("exception", f"no grant {clean(args.grant_id)} in force to revoke", EXIT_NOTHING)
        if args.json:
            print_json(revoked.as_dict())
        else:
            print(f"revoked {revoked.id} ({clean(revoked.user)} on {clean(revoked.host)}) by "
                  f"{clean(revoked.revoked_by)}; the collector "
                  "pushes the change to the host's agent within seconds")
        return 0

    return with_store("exception", args.config, work, readonly=False)


def _state(grant: GrantRecord, now: str) -> str:
    if grant.revoked_at:
        by = f" by {clean(grant.revoked_by)}" if grant.revoked_by else ""
        return f"revoked {grant.revoked_at[:19]}Z{by}"
    return "active" if grant.active(now) else "expired"
