"""Removable devices in the store: what was seen, what is approved, what learning proposes, and
every change to approvals (who, when, why), append-only like alert_triage.

    book = DeviceBook(store.domain())
    book.approve("SANDISK-0001", scope="user", subject="alice", by="carol", note="issued by IT")

Tables (same SQL on SQLite and PostgreSQL, collector/store/domain.py):
    device_sightings   serial -> first/last seen and a JSON body (ids, users, hosts, bytes, alerts)
    device_approvals   (serial, scope, subject): the approvals in force
    device_proposals   (serial, scope, subject): what `devices learn` proposes, until accepted
    device_history     every approve, revoke, accept and reject; never updated or deleted

Errors (StoreError subclasses): InvalidDeviceChange (`field`, `reason`) for input outside the
limits; NoSuchApproval when a revoke or accept finds nothing to act on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from collector.store import triage
from collector.store.base import StoreError
from collector.store.domain import DomainBook, Transaction
from common.ecstime import ecs_now

MAX_SERIAL_CHARS = 200
MAX_NAME_CHARS = 200
MAX_PROPOSALS = 10_000

_HISTORY = "device_history"
_UPSERT_APPROVAL = (
    "INSERT INTO device_approvals (serial, scope, subject, at, by_name, note) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (serial, scope, subject) DO UPDATE SET at = excluded.at,"
    " by_name = excluded.by_name, note = excluded.note"
)
_SELECT_HISTORY = "SELECT at, by_name, action, serial, scope, subject, note FROM device_history"


_CREATE = (
    "CREATE TABLE IF NOT EXISTS device_sightings (serial TEXT PRIMARY KEY, first_seen TEXT NOT NULL,"
    " last_seen TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS device_approvals (serial TEXT NOT NULL, scope TEXT NOT NULL,"
    " subject TEXT NOT NULL, at TEXT NOT NULL, by_name TEXT NOT NULL, note TEXT NOT NULL,"
    " PRIMARY KEY (serial, scope, subject))",
    "CREATE TABLE IF NOT EXISTS device_proposals (serial TEXT NOT NULL, scope TEXT NOT NULL,"
    " subject TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL,"
    " PRIMARY KEY (serial, scope, subject))",
    "CREATE TABLE IF NOT EXISTS device_history (id TEXT PRIMARY KEY, at TEXT NOT NULL,"
    " by_name TEXT NOT NULL, action TEXT NOT NULL, serial TEXT NOT NULL, scope TEXT NOT NULL,"
    " subject TEXT NOT NULL, note TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS device_history_at ON device_history (at, id)",
)


SCOPES = ("all", "user", "group")


@dataclass(frozen=True)
class Approval:
    """One approval as stored: serial, scope (all | user | group), subject (user or group name)."""

    serial: str
    scope: str
    subject: str = ""
    at: str = ""
    by: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (`exfilguard devices approvals --json`): the fields in this order."""
        return asdict(self)


@dataclass
class Sighting:
    """What is known about one removable device."""

    serial: str
    vendor_id: str = ""
    product_id: str = ""
    vendor: str = ""
    model: str = ""
    first_seen: str = ""
    last_seen: str = ""
    users: dict[str, str] = field(default_factory=dict)  # user -> last seen (ECS time)
    hosts: dict[str, str] = field(default_factory=dict)  # host -> last seen
    bytes_written: int = 0
    files_written: int = 0
    alerts: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`exfilguard devices --json`, the store's body column): the fields in this
        order (users and hosts copied)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sighting:
        """The inverse of as_dict; raises KeyError/TypeError/ValueError when malformed."""
        return cls(
            serial=str(data["serial"]),
            vendor_id=str(data.get("vendor_id", "")),
            product_id=str(data.get("product_id", "")),
            vendor=str(data.get("vendor", "")),
            model=str(data.get("model", "")),
            first_seen=str(data.get("first_seen", "")),
            last_seen=str(data.get("last_seen", "")),
            users={str(k): str(v) for k, v in dict(data.get("users", {})).items()},
            hosts={str(k): str(v) for k, v in dict(data.get("hosts", {})).items()},
            bytes_written=int(data.get("bytes_written", 0)),
            files_written=int(data.get("files_written", 0)),
            alerts=int(data.get("alerts", 0)),
        )


class InvalidDeviceChange(StoreError):
    """An approval input outside its limits: `field` (serial, scope, subject, by, note) and `reason`."""

    def __init__(self, location: str, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(location, f"{field}: {reason}")


class NoSuchApproval(StoreError):
    """Nothing to revoke or accept for `serial` (nothing was changed)."""

    def __init__(self, location: str, serial: str, what: str) -> None:
        self.serial = serial
        super().__init__(location, f"no {what} for {serial}")


@dataclass(frozen=True)
class DeviceChange:
    """One entry of the approvals history."""

    at: str
    by: str
    action: str  # approve | revoke | accept | reject
    serial: str
    scope: str
    subject: str
    note: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (`exfilguard devices history --json`): the fields in this order."""
        return asdict(self)


@dataclass(frozen=True)
class Proposal:
    """An approval `devices learn` proposes, with why."""

    serial: str
    scope: str
    subject: str
    at: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form: the fields in this order."""
        return asdict(self)


def _now() -> str:
    return ecs_now()


class DeviceBook(DomainBook):
    """Device sightings, approvals, proposals and their history in one store."""

    TABLES = "devices"
    CREATE = _CREATE
    APPEND_ONLY = (_HISTORY,)

    def _exists(self, tx: Transaction) -> bool:
        return self.sql.readonly is False or tx.has_table(_HISTORY)

    # ------------------------------------------------------------------ sightings

    def save_sightings(self, sightings: Iterable[Sighting]) -> int:
        """Write (insert or replace) sightings; how many."""
        rows = [
            (s.serial, s.first_seen, s.last_seen, json.dumps(s.as_dict(), sort_keys=True)) for s in sightings
        ]
        if not rows or not self.ensure():
            return 0
        with self.sql.transaction() as tx:
            tx.many(
                "INSERT INTO device_sightings (serial, first_seen, last_seen, body) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (serial) DO UPDATE SET first_seen = excluded.first_seen,"
                " last_seen = excluded.last_seen, body = excluded.body",
                rows,
            )
        return len(rows)

    def sightings(self, since: str | None = None) -> list[Sighting]:
        """Every device seen (last seen at or after `since`, if given), most recently seen first."""
        self.ensure()
        with self.sql.transaction() as tx:
            if not self._exists(tx):
                return []
            sql = "SELECT body FROM device_sightings"
            params: tuple[Any, ...] = ()
            if since:
                sql, params = sql + " WHERE last_seen >= ?", (since,)
            rows = tx.query(sql + " ORDER BY last_seen DESC, serial", params)
        out: list[Sighting] = []
        for (body,) in rows:
            try:
                out.append(Sighting.from_dict(json.loads(body)))
            except (KeyError, TypeError, ValueError):
                continue  # a damaged row must not hide the others
        return out

    # ------------------------------------------------------------------ approvals

    def approvals(self) -> list[Approval]:
        """The approvals in force, by serial."""
        self.ensure()
        with self.sql.transaction() as tx:
            if not self._exists(tx):
                return []
            rows = tx.query(
                "SELECT serial, scope, subject, at, by_name, note FROM device_approvals"
                " ORDER BY serial, scope, subject"
            )
        return [Approval(*(str(v) for v in row)) for row in rows]

    def version(self) -> tuple[int, str]:
        """Changes recorded so far and the newest one's time: changes when approvals do."""
        self.ensure()
        with self.sql.transaction() as tx:
            if not self._exists(tx):
                return (0, "")
            row = tx.query("SELECT COUNT(*), MAX(at) FROM device_history")[0]
        return int(row[0]), str(row[1] or "")

    def approve(
        self, serial: str, *, scope: str = "all", subject: str = "", by: str, note: str
    ) -> DeviceChange:
        """Approve a serial for everyone, a user or a group; recorded in the history."""
        self._check(serial, scope, subject, by, note)
        self._writable()
        change = DeviceChange(_now(), by, "approve", serial, scope, subject, note)
        with self.sql.transaction() as tx:
            tx.query(
                _UPSERT_APPROVAL,
                (serial, scope, subject, change.at, by, note),
            )
            tx.query(
                "DELETE FROM device_proposals WHERE serial = ? AND scope = ? AND subject = ?",
                (serial, scope, subject),
            )
            self._record(tx, [change])
        return change

    def revoke(
        self, serial: str, *, scope: str | None = None, subject: str = "", by: str, note: str
    ) -> list[DeviceChange]:
        """Withdraw the serial's approvals (all of them, or one scope and subject); NoSuchApproval if none."""
        self._check(serial, scope or "all", subject, by, note)
        self._writable()
        with self.sql.transaction() as tx:
            if scope is None:
                rows = tx.query("SELECT scope, subject FROM device_approvals WHERE serial = ?", (serial,))
            else:
                rows = tx.query(
                    "SELECT scope, subject FROM device_approvals"
                    " WHERE serial = ? AND scope = ? AND subject = ?",
                    (serial, scope, subject),
                )
            if not rows:
                raise NoSuchApproval(self.location, serial, "approval")
            tx.many(
                "DELETE FROM device_approvals WHERE serial = ? AND scope = ? AND subject = ?",
                [(serial, s, u) for s, u in rows],
            )
            at = _now()
            changes = [DeviceChange(at, by, "revoke", serial, str(s), str(u), note) for s, u in rows]
            self._record(tx, changes)
        return changes

    # ------------------------------------------------------------------ learning

    def propose(self, proposals: Sequence[Proposal]) -> int:
        """Write proposals (replacing older ones for the same approval); approved ones are left out."""
        if len(proposals) > MAX_PROPOSALS:
            raise InvalidDeviceChange(self.location, "proposals", f"at most {MAX_PROPOSALS} at once")
        self._writable()
        approved = {(a.serial, a.scope, a.subject) for a in self.approvals()}
        rows = [
            (p.serial, p.scope, p.subject, p.at, p.reason)
            for p in proposals
            if (p.serial, p.scope, p.subject) not in approved
        ]
        with self.sql.transaction() as tx:
            tx.many(
                "INSERT INTO device_proposals (serial, scope, subject, at, reason) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (serial, scope, subject) DO UPDATE SET at = excluded.at,"
                " reason = excluded.reason",
                rows,
            )
        return len(rows)

    def proposals(self) -> list[Proposal]:
        """Pending proposals, by serial."""
        self.ensure()
        with self.sql.transaction() as tx:
            if not self._exists(tx):
                return []
            rows = tx.query(
                "SELECT serial, scope, subject, at, reason FROM device_proposals ORDER BY serial, scope, subject"  # noqa: E501
            )
        return [Proposal(*(str(v) for v in row)) for row in rows]

    def decide(
        self, serials: Sequence[str] | None, *, accept: bool, by: str, note: str
    ) -> list[DeviceChange]:
        """Accept (into approvals) or reject the proposals of these serials (None: all of them)."""
        for serial in serials or ():
            self._check(serial, "all", "", by, note)
        self._check("-", "all", "", by, note)
        self._writable()
        with self.sql.transaction() as tx:
            rows = tx.query(
                "SELECT serial, scope, subject, reason FROM device_proposals ORDER BY serial, scope, subject"
            )
            chosen = [r for r in rows if serials is None or r[0] in serials]
            missing = sorted(set(serials or ()) - {str(r[0]) for r in chosen})
            if missing or not chosen:
                raise NoSuchApproval(self.location, ", ".join(missing) or "any device", "proposal")
            at = _now()
            action = "accept" if accept else "reject"
            changes = [
                DeviceChange(at, by, action, str(s), str(c), str(u), f"{note} (proposed: {reason})")
                for s, c, u, reason in chosen
            ]
            tx.many(
                "DELETE FROM device_proposals WHERE serial = ? AND scope = ? AND subject = ?",
                [r[:3] for r in chosen],
            )
            if accept:
                tx.many(
                    _UPSERT_APPROVAL,
                    [(c.serial, c.scope, c.subject, c.at, c.by, c.note) for c in changes],
                )
            self._record(tx, changes)
        return changes

    # ------------------------------------------------------------------ history

    def history(self, serial: str | None = None) -> list[DeviceChange]:
        """Every recorded change (of one serial), oldest first."""
        self.ensure()
        with self.sql.transaction() as tx:
            if not self._exists(tx):
                return []
            if serial is None:
                rows = tx.query(_SELECT_HISTORY + " ORDER BY at, id")
            else:
                rows = tx.query(_SELECT_HISTORY + " WHERE serial = ? ORDER BY at, id", (serial,))
        return [DeviceChange(*(str(v) for v in row)) for row in rows]

    def _record(self, tx: Transaction, changes: Sequence[DeviceChange]) -> None:
        tx.many(
            "INSERT INTO device_history (id, at, by_name, action, serial, scope, subject, note)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(uuid.uuid4().hex, c.at, c.by, c.action, c.serial, c.scope, c.subject, c.note) for c in changes],
        )

    def _writable(self) -> None:
        if not self.ensure():
            raise StoreError(self.location, "the store is open read-only")

    def _check(self, serial: str, scope: str, subject: str, by: str, note: str) -> None:
        bad = InvalidDeviceChange
        if (
            not serial.strip()
            or len(serial) > MAX_SERIAL_CHARS
            or not triage.printable(serial, newlines=False)
        ):
            raise bad(self.location, "serial", f"a serial of 1 to {MAX_SERIAL_CHARS} printable characters")
        if scope not in SCOPES:
            raise bad(self.location, "scope", f"{scope!r} is not one of {', '.join(SCOPES)}")
        if (scope == "all") != (not subject):
            raise bad(
                self.location, "subject", "a user or group name goes with --user/--group, and only there"
            )
        if len(subject) > MAX_NAME_CHARS or not triage.printable(subject, newlines=False):
            raise bad(self.location, "subject", f"a name of at most {MAX_NAME_CHARS} printable characters")
        if not by.strip() or len(by) > triage.MAX_BY_CHARS or not triage.printable(by, newlines=False):
            raise bad(self.location, "by", f"a name of 1 to {triage.MAX_BY_CHARS} printable characters")
        if not note.strip():
            raise bad(self.location, "note", "a note is required (say why)")
        if len(note) > triage.MAX_NOTE_CHARS or not triage.printable(note, newlines=True):
            raise bad(self.location, "note", f"at most {triage.MAX_NOTE_CHARS} printable characters")


def learn(sightings: Iterable[Sighting], since: str, now: str | None = None) -> list[Proposal]:
    """Proposals from what was seen since `since`: each device for each user who used it then."""
    at = now or _now()
    out: list[Proposal] = []
    for seen in sightings:
        hosts = sorted(h for h, last in seen.hosts.items() if last >= since)
        for user, last in sorted(seen.users.items()):
            if last < since:
                continue
            reason = (
                f"{seen.vendor or '?'} {seen.model or '?'} used by {user} until {last[:16]}"
                f" on {len(hosts)} host(s); {seen.files_written} files, {seen.bytes_written} bytes written"
            )
            out.append(Proposal(seen.serial, "user", user, at, reason))
    return out
