"""Console accounts: a name, a role and an argon2 hash of the password, in the collector's store.

    book = AccountBook(store.domain())
    book.add("carol", "officer", password, by="root")

Roles (a small fixed set; what each may do is decided in web.py):
    officer   reads everything, triages alerts, builds cases, exports case packages
    auditor   reads and exports only (no triage, no case changes)
    admin     everything an officer may, and the audit log

Table `console_users (name, role, pw_hash, created, updated, by_name)`; the same SQL on SQLite
and PostgreSQL (collector/store/domain.py). Passwords are never stored or logged, only hashes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from collector.console.errors import InvalidAccount, LoginRefused, NoSuchAccount
from collector.store.domain import DomainBook
from collector.store.triage import printable
from common.ecstime import ecs_now

if TYPE_CHECKING:
    import argon2

ROLES = ("officer", "auditor", "admin")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS console_users (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
    " pw_hash TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, by_name TEXT NOT NULL)",
)


@functools.cache
def _hasher() -> argon2.PasswordHasher:
    """argon2id with the library's current recommended costs (loaded when first needed: the admin
    CLI imports this module for every command)."""
    import argon2

    return argon2.PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # Checked when the name is unknown, so a wrong name costs the same time as a wrong password.
    return _hasher().hash("not a password of anyone")


@dataclass(frozen=True)
class Account:
    """One console user (without the hash)."""

    name: str
    role: str
    created: str = ""
    updated: str = ""
    by: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (`exfilguard users list --json`)."""
        return {"name": self.name, "role": self.role, "created": self.created, "updated": self.updated,
                "by": self.by}  # fmt: skip


def check_name(location: str, name: str) -> str:
    """A user name: 1-64 letters, digits and . _ @ -, starting with a letter or digit."""
    if not _NAME.fullmatch(name):
        raise InvalidAccount(
            location, "name", f"1-64 letters, digits, '.', '_', '@' or '-', got {name[:80]!r}"
        )
    return name


def check_password(location: str, password: str) -> str:
    """A password of MIN_PASSWORD_CHARS to MAX_PASSWORD_CHARS printable characters."""
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidAccount(
            location,
            "password",
            f"{MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, got {len(password)}",
        )
    if not printable(password, newlines=False):
        raise InvalidAccount(location, "password", "control characters are not allowed")
    return password


class AccountBook(DomainBook):
    """The console's accounts in one store."""

    TABLES = "console_users"
    CREATE = SCHEMA

    def add(self, name: str, role: str, password: str, *, by: str, replace: bool = False) -> Account:
        """Create an account (or, with `replace`, set its role and password); InvalidAccount if it exists."""
        check_name(self.location, name)
        if role not in ROLES:
            raise InvalidAccount(self.location, "role", f"{role!r} is not one of {', '.join(ROLES)}")
        check_password(self.location, password)
        pw_hash = _hasher().hash(password)
        now = ecs_now()
        self.ensure()
        with self.sql.transaction() as tx:
            exists = tx.query("SELECT created FROM console_users WHERE name = ?", (name,))
            if exists and not replace:
                raise InvalidAccount(self.location, "name", f"{name} exists already (--replace to change it)")
            if exists:
                tx.query(
                    "UPDATE console_users SET role = ?, pw_hash = ?, updated = ?, by_name = ? WHERE name = ?",
                    (role, pw_hash, now, by, name),
                )
                return Account(name, role, str(exists[0][0]), now, by)
            tx.query(
                "INSERT INTO console_users (name, role, pw_hash, created, updated, by_name)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, pw_hash, now, now, by),
            )
        return Account(name, role, now, now, by)

    def get(self, name: str) -> Account | None:
        """The account of this name, or None."""
        with self.sql.transaction() as tx:
            if not tx.has_table("console_users"):
                return None
            rows = tx.query(
                "SELECT name, role, created, updated, by_name FROM console_users WHERE name = ?", (name,)
            )
        return Account(*(str(v) for v in rows[0])) if rows else None

    def require(self, name: str) -> Account:
        """The account of this name; NoSuchAccount if there is none."""
        account = self.get(name)
        if account is None:
            raise NoSuchAccount(self.location, name)
        return account

    def accounts(self) -> list[Account]:
        """Every account, by name."""
        with self.sql.transaction() as tx:
            if not tx.has_table("console_users"):
                return []
            rows = tx.query("SELECT name, role, created, updated, by_name FROM console_users ORDER BY name")
        return [Account(*(str(v) for v in r)) for r in rows]

    def authenticate(self, name: str, password: str) -> Account:
        """The account when the password is its own; LoginRefused otherwise (same time either way)."""
        rows: list[tuple[object, ...]] = []
        if _NAME.fullmatch(name) and len(password) <= MAX_PASSWORD_CHARS:
            with self.sql.transaction() as tx:
                if tx.has_table("console_users"):
                    rows = tx.query("SELECT role, pw_hash FROM console_users WHERE name = ?", (name,))
        from argon2.exceptions import InvalidHashError, VerificationError

        stored = str(rows[0][1]) if rows else _dummy_hash()
        try:
            _hasher().verify(stored, password)
        except (VerificationError, InvalidHashError) as exc:  # a mismatch is a VerificationError
            raise LoginRefused("login", "wrong name or password") from exc
        if not rows:
            raise LoginRefused("login", "wrong name or password")
        return Account(name, str(rows[0][0]))
