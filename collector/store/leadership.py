"""Leadership: one collector of a fleet sharing a PostgreSQL store does a job at a time.

A PostgreSQL session-level advisory lock, keyed by a name, held on a connection of its own:
whoever holds it leads; when that collector dies (or its connection drops) the server releases
the lock and another collector's next `try_acquire()` takes it over. On SQLite a collector has
its store to itself, so it always leads.

A standby keeps its session open between asks (one query each, no new server process each
second); when it cannot connect at all (the database is down) it waits before the next attempt,
from 1 s doubling to 10 s, jittered, so a fleet's standbys do not storm a recovering server.
`release()` unlocks before it closes: closing alone leaves the lock held until the server
process has finished exiting, and the next leader's first ask could miss it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time

import psycopg

from collector.store import pgconnect
from collector.store.base import StoreUnavailable

_SIGN = 1 << 63
RETRY_FIRST = 1.0  # seconds before connecting again after a failed connect, doubling
RETRY_MAX = 10.0  # bounded: a standby is back within this (plus its ask interval) after an outage


# (key, key): the sessions holding a role's lock (a bigint key is split over classid and objid).
_HOLDERS = (
    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND objid = (%s::bigint & 4294967295)::oid AND classid = ((%s::bigint >> 32) & 4294967295)::oid"
)


def led(conn: pgconnect.Connection, name: str) -> bool:
    """True when some collector of the fleet leads `name` now (asked on any session of the store)."""
    key = lock_key(name)
    return conn.execute(_HOLDERS, (key, key)).fetchone() is not None


def lock_key(name: str) -> int:
    """The advisory lock's 64-bit key for a name: stable across processes and hosts (blake2b)."""
    value = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return value - (1 << 64) if value & _SIGN else value  # bigint is signed


class Leadership:
    """Who leads `name` among the collectors of one store: `try_acquire`, `held`, `release`.

    Thread-safe. `held()` asks the server (one round trip), so a dropped session (the server
    restarted, the connection was killed) is noticed as lost leadership, never assumed held.
    """

    def __init__(self, store: str, name: str) -> None:
        self.name = name
        self._url = store if pgconnect.is_postgres(store) else None
        self._key = lock_key(name)
        self._conn: pgconnect.Connection | None = None  # leading on it, or standing by
        self._leading = False
        self._lock = threading.Lock()
        self._retry_delay = 0.0  # after failed connects: wait before the next (0: connect at once)
        self._retry_at = 0.0
        self.terms = 0  # times leadership was taken: a new term means others may have led meanwhile
        self.connects = 0  # sessions opened (a standby reuses its own)

    @property
    def shared(self) -> bool:
        """True when other collectors may lead instead (a PostgreSQL store)."""
        return self._url is not None

    @property
    def connection(self) -> pgconnect.Connection | None:
        """The lock's own session while this collector leads (None on SQLite or when not leading):
        work committed on it cannot outlive the lock, since a lost session can commit nothing."""
        return self._conn if self._leading else None

    def try_acquire(self) -> bool:
        """Lead `name` if nobody else does; True when this collector leads (now or already)."""
        if self._url is None:
            if not self.terms:
                self.terms = 1
            return True
        with self._lock:
            if self._leading:
                if self._still_held():
                    return True
                self._drop()
            conn = self._session()
            if conn is None:
                return False
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            except psycopg.Error:
                self._drop()
                return False
            if row is None or not row[0]:
                return False  # another collector leads: ask again on this session next time
            self._leading = True
            self.terms += 1
            return True

    def held(self) -> bool:
        """True while this collector leads; False once its session is gone or it released."""
        if self._url is None:
            return True
        with self._lock:
            if not self._leading:
                return False
            if self._still_held():
                return True
            self._drop()
            return False

    def release(self) -> None:
        """Stop leading: unlock, then close the session (a standby's too); a no-op when neither."""
        with self._lock:
            if self._leading and self._conn is not None and not self._conn.broken:
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
            self._drop()

    def _session(self) -> pgconnect.Connection | None:
        """The standing session, or a new one; None while connecting fails (then backing off)."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._drop()
        now = time.monotonic()
        if now < self._retry_at:
            return None
        assert self._url is not None
        self.connects += 1
        try:
            self._conn = pgconnect.connect(self._url, application=f"exfilguard leadership {self.name}",
                                           keepalive=True)  # fmt: skip
        except StoreUnavailable:
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2) if self._retry_delay else RETRY_FIRST
            self._retry_at = now + self._retry_delay * random.uniform(0.5, 1.0)
            return None
        self._retry_delay = 0.0
        return self._conn

    def _still_held(self) -> bool:
        assert self._conn is not None
        try:
            mine = _HOLDERS + " AND pid = pg_backend_pid()"
            row = self._conn.execute(mine, (self._key, self._key)).fetchone()
        except psycopg.Error:
            return False
        return row is not None

    def _drop(self) -> None:
        self._leading = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
