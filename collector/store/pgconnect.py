"""Connecting to the PostgreSQL store: a location safe to print, and errors that say what is wrong.

The store URL may carry a password (`postgresql://user:secret@host/db`). It never appears in
a location, a log line or an error: `describe()` keeps only host, port and database, and
server messages are scrubbed of it. Admins can leave the password out of the URL altogether:
libpq then reads PGPASSWORD, ~/.pgpass or a `passfile=` given in the URL.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from collector.store import is_postgres
from collector.store.base import StoreUnavailable

__all__ = ["Connection", "connect", "describe", "is_postgres", "reason", "scrub"]
CONNECT_TIMEOUT_SECONDS = 10

Connection = psycopg.Connection[tuple[Any, ...]]




def describe(url: str) -> str:
    """`postgresql://host:port/db` of a store URL, for messages: no user name, no password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        # libpq refused it (an unknown parameter, say); urllib still finds host and database.
        try:
            parts = urlsplit(url)
            params = {"host": parts.hostname, "port": parts.port, "dbname": unquote(parts.path.lstrip("/"))}
        except ValueError:
            return "postgresql://(unreadable URL)"
    host = str(params.get("host") or "localhost")
    if host.startswith("/"):
        host = f"[{host}]"  # a unix socket directory
    port = params.get("port")
    where = f"{host}:{port}" if port else host
    return f"postgresql://{where}/{params.get('dbname') or ''}"


def _password(url: str) -> str:
    try:
        return str(conninfo_to_dict(url).get("password") or "")
    except psycopg.Error:
        return ""


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password (and the URL itself) blanked out."""
    secret = _password(url)
    text = text.replace(url, describe(url))
    if len(secret) >= 3:  # blanking a one- or two-letter password would garble the message
        text = text.replace(secret, "***")
    return text


def reason(exc: psycopg.Error, url: str) -> str:
    """Why a connection failed, in an admin's words, with libpq's own (scrubbed) message."""
    detail = " ".join(scrub(str(exc), url).split())
    lowered = detail.lower()
    user = ""
    with contextlib.suppress(psycopg.Error):
        user = str(conninfo_to_dict(url).get("user") or "")
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        who = f" for user {user}" if user else ""
        return f"authentication failed{who} (check the password: URL, PGPASSWORD or passfile): {detail}"
    if "database" in lowered and "does not exist" in lowered:
        return f"no such database (create it, see docs/deploy.md): {detail}"
    if "role" in lowered and "does not exist" in lowered:
        return f"no such role: {detail}"
    if any(s in lowered for s in ("connection refused", "no such file or directory", "timeout expired",
                                  "could not translate host name", "no route to host")):  # fmt: skip
        return f"server not reachable (is PostgreSQL running and listening there?): {detail}"
    return f"cannot connect: {detail}"


# A session whose far end vanished (a network partition, a host gone without closing it) is
# found dead in about 10 + 3 x 5 s on both sides: the server ends it, freeing what it held (a
# leadership's lock), and the client's next statement fails instead of waiting for hours.
_KEEPALIVE: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}  # fmt: skip
_SERVER_KEEPALIVE = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"


def connect(
    url: str, *, readonly: bool = False, application: str = "exfilguard", keepalive: bool = False
) -> Connection:
    """An autocommit connection to the store's database; StoreUnavailable (host/db only) if not.
    `keepalive`: a dead peer is noticed within about 25 s on both sides (a leadership's session)."""
    options = ["-c default_transaction_read_only=on"] if readonly else []
    extra: dict[str, Any] = {}
    if keepalive:
        options.append(_SERVER_KEEPALIVE)
        extra |= _KEEPALIVE
    if options:
        extra["options"] = " ".join(options)
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name=application,
            **extra,
        )
    except psycopg.Error as exc:
        raise StoreUnavailable(describe(url), reason(exc, url)) from None  # the cause may quote the URL
