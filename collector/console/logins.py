"""One-time login links and browser sessions, in the collector's store.

    token = LoginBook(store.domain()).issue_link("carol")   # `exfilguard console link --user carol`
    name = book.redeem_link(token)                           # the browser opens /link/TOKEN once

Only SHA-256 hashes of link and session tokens are stored: a copy of the store (a backup, a
PostgreSQL replica) does not let anyone log in. A link works once, for LINK_SECONDS; a session
lasts SESSION_SECONDS and ends earlier at logout or when its account is removed.

Tables: `console_links (token_hash, user_name, created, expires, used_at)` and
`console_sessions (token_hash, user_name, csrf, created, expires)`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from collector.console.accounts import SCHEMA as ACCOUNTS_SCHEMA
from collector.console.errors import LoginRefused, NoSuchAccount
from collector.store.domain import DomainBook, Transaction
from common.ecstime import ecs_time

LINK_SECONDS = 600
SESSION_SECONDS = 8 * 3600
MAX_TOKEN_CHARS = 200

SCHEMA = (
    *ACCOUNTS_SCHEMA,
    "CREATE TABLE IF NOT EXISTS console_links (token_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL,"
    " created TEXT NOT NULL, expires TEXT NOT NULL, used_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS console_sessions (token_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL,"
    " csrf TEXT NOT NULL, created TEXT NOT NULL, expires TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires)",
)


@dataclass(frozen=True)
class Session:
    """A logged-in browser: who, with which role, its CSRF token and when it ends."""

    token: str  # what the cookie holds (the store has only its hash)
    user: str
    role: str
    csrf: str
    expires: str


def token_hash(token: str) -> str:
    """What the store keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LoginBook(DomainBook):
    """Login links and sessions in one store."""

    TABLES = "console_logins"
    CREATE = SCHEMA

    def issue_link(self, user: str, seconds: int = LINK_SECONDS) -> tuple[str, str]:
        """A new one-time link token for an existing account, and when it expires."""
        self.ensure()
        token = secrets.token_urlsafe(32)
        now = _now()
        expires = ecs_time(now + dt.timedelta(seconds=seconds))
        with self.sql.transaction() as tx:
            if not tx.query("SELECT 1 FROM console_users WHERE name = ?", (user,)):
                raise NoSuchAccount(self.location, user)
            tx.query("DELETE FROM console_links WHERE expires < ?", (ecs_time(now),))
            tx.query(
                "INSERT INTO console_links (token_hash, user_name, created, expires, used_at)"
                " VALUES (?, ?, ?, ?, '')",
                (token_hash(token), user, ecs_time(now), expires),
            )
        return token, expires

    def redeem_link(self, token: str) -> Session:
        """Use a link once: a new session for its account; LoginRefused if unknown, used or expired."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise LoginRefused("link", "not a login link")
        now = ecs_time(_now())
        with self.sql.transaction() as tx:
            rows = tx.query(
                "SELECT user_name, expires, used_at FROM console_links WHERE token_hash = ?",
                (token_hash(token),),
            )
            if not rows:
                raise LoginRefused("link", "unknown login link")
            user, expires, used_at = (str(v) for v in rows[0])
            if used_at:
                raise LoginRefused("link", "this login link was used already")
            if expires <= now:
                raise LoginRefused("link", "this login link has expired")
            tx.query("UPDATE console_links SET used_at = ? WHERE token_hash = ?", (now, token_hash(token)))
            return self._open(tx, user)

    def open_session(self, user: str) -> Session:
        """A new session for an account that just proved who it is."""
        with self.sql.transaction() as tx:
            return self._open(tx, user)

    def _open(self, tx: Transaction, user: str) -> Session:
        role = tx.query("SELECT role FROM console_users WHERE name = ?", (user,))
        if not role:
            raise LoginRefused("login", f"no such console user: {user}")
        now = _now()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = ecs_time(now + dt.timedelta(seconds=SESSION_SECONDS))
        tx.query("DELETE FROM console_sessions WHERE expires < ?", (ecs_time(now),))
        tx.query(
            "INSERT INTO console_sessions (token_hash, user_name, csrf, created, expires)"
            " VALUES (?, ?, ?, ?, ?)",
            (token_hash(token), user, csrf, ecs_time(now), expires),
        )
        return Session(token, user, str(role[0][0]), csrf, expires)

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token (with its account's current role), or None."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        with self.sql.transaction() as tx:
            if not tx.has_table("console_sessions"):
                return None
            rows = tx.query(
                "SELECT s.user_name, u.role, s.csrf, s.expires FROM console_sessions s"
                " JOIN console_users u ON u.name = s.user_name WHERE s.token_hash = ? AND s.expires > ?",
                (token_hash(token), ecs_time(_now())),
            )
        return Session(token, *(str(v) for v in rows[0])) if rows else None

    def close_session(self, token: str) -> None:
        """End a session (logout)."""
        with self.sql.transaction() as tx:
            tx.query("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash(token),))
