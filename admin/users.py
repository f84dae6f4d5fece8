"""`exfilguard users`: the console's local accounts (add, list). See docs/console.md.

    exfilguard users add carol --role officer < password.txt

The password is read from standard input (one line; typed twice when it is a terminal) and only
its argon2 hash is stored. Roles: officer, auditor (read and export only), admin.

Exit codes: 0 done; 1 the store cannot be read or written; 2 usage, config or input error
(nothing changed).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from admin import terminal
from admin.alerts import invoking_user
from admin.configured import EXIT_USAGE, with_store
from admin.terminal import print_json, store_options
from collector.console import errors
from collector.console.accounts import MAX_PASSWORD_CHARS, ROLES, AccountBook
from collector.store import Store, StoreError


def register(subparsers: Any) -> None:
    """Add `users add` and `users list`."""
    parser = terminal.command(subparsers, "users", "console accounts (officer, auditor, admin)", __doc__)
    sub = parser.add_subparsers(dest="users_command", metavar="[add|list]", required=True)
    add = sub.add_parser("add", help="add a console account; the password is read from stdin")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument(
        "--replace", action="store_true", help="set the role and password of an existing account"
    )
    store_options(add, default=None)
    add.set_defaults(run=run_add)
    listing = sub.add_parser("list", help="the console's accounts")
    store_options(listing, default=None)
    listing.set_defaults(run=run_list)


def read_password() -> str:
    """The password from stdin: one line, or typed twice on a terminal; InvalidAccount when unusable."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise errors.InvalidAccount("stdin", "password", "the two passwords differ")
        return first
    line = sys.stdin.readline(MAX_PASSWORD_CHARS + 2)
    return line[:-1] if line.endswith("\n") else line


def run_add(args: argparse.Namespace) -> int:
    """Add (or replace) one account."""
    try:
        password = read_password()
    except errors.InvalidAccount as exc:
        return terminal.fail("users add", f"{exc.field}: {exc.reason}", EXIT_USAGE)

    def work(store: Store) -> int:
        account = AccountBook(store.domain()).add(
            args.name, args.role, password, by=invoking_user(), replace=args.replace
        )
        if args.json:
            print_json(account.as_dict())
        else:
            print(f"console user {account.name} ({account.role}) saved")
        return 0

    return _with_store("users add", args, work, readonly=False)


def run_list(args: argparse.Namespace) -> int:
    """List the accounts."""

    def work(store: Store) -> int:
        accounts = AccountBook(store.domain()).accounts()
        if args.json:
            print_json([a.as_dict() for a in accounts])
            return 0
        rows = [("NAME", "ROLE", "CREATED", "UPDATED", "BY")]
        rows += [(a.name, a.role, a.created[:19], a.updated[:19], terminal.clean(a.by)) for a in accounts]
        sys.stdout.write(terminal.table(rows) + ("" if accounts else "(no console users)\n"))
        return 0

    return _with_store("users list", args, work, readonly=True)


def _with_store(command: str, args: argparse.Namespace, work: Any, *, readonly: bool) -> int:
    try:
        return with_store(command, args.config, work, readonly=readonly, refusal=_refusal)
    except errors.InvalidAccount as exc:
        return terminal.fail(command, f"{exc.field}: {exc.reason}", EXIT_USAGE)
    except errors.ConsoleError as exc:
        return terminal.fail(command, exc.reason, EXIT_USAGE)


def _refusal(exc: StoreError) -> tuple[str, int] | None:
    return None
