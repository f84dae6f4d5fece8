"""Prevention exceptions officers grant (`exfilguard exception grant`), recorded in the store.

A grant lets one user on one host (and, when named, only onto one device) copy tagged data to
removable media until `until`. The row is the record an auditor reads: who granted it
(`granted_by`), when, why (`note`), and when and by whom it was revoked (`revoked_at`, "" while
not; `revoked_by`). A
grant is never deleted; a revoked or expired one simply stops being pushed
(collector/fleet/config.py). `signature` is the collector's Ed25519 signature over the grant
(common/grants.py), which the agent checks before honouring it.

Schema 6 adds the table (both backends, the same statements), schema 9 its `revoked_by`. Hosts
are kept lower case and compared so; times are ECS strings, compared as text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GrantRecord:
    """One grant as recorded."""

    id: str
    host: str
    user: str
    device: str  # serial; "" for any removable device
    granted_by: str
    note: str
    granted_at: str  # ECS time
    until: str  # ECS time
    revoked_at: str = ""  # ECS time; "" while not revoked
    signature: str = ""  # base64 Ed25519 over common.grants.signed_bytes
    revoked_by: str = ""  # the officer who revoked it ("" while not, and for grants revoked before schema 9)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`exfilguard exception list --json`)."""
        return asdict(self)

    def active(self, now: str) -> bool:
        """Not revoked and not expired at `now` (an ECS time)."""
        return not self.revoked_at and now < self.until


_COLUMNS_6 = "id, host, user_name, device, granted_by, note, granted_at, until, revoked_at, signature"
_COLUMNS = f"{_COLUMNS_6}, revoked_by"
_TABLE = (
    "CREATE TABLE {exists}grants (id TEXT{c} PRIMARY KEY, host TEXT{c} NOT NULL, user_name TEXT NOT NULL,"
    " device TEXT NOT NULL, granted_by TEXT NOT NULL, note TEXT NOT NULL, granted_at TEXT{c} NOT NULL,"
    " until TEXT{c} NOT NULL, revoked_at TEXT{c} NOT NULL DEFAULT '', signature TEXT NOT NULL)"
)
SQLITE_SCHEMA_6 = (
    _TABLE.format(exists="", c=""),
    "CREATE INDEX grants_by_host ON grants (host, until)",
)
POSTGRES_SCHEMA_6 = (
    _TABLE.format(exists="IF NOT EXISTS ", c=' COLLATE "C"'),
    "CREATE INDEX IF NOT EXISTS grants_by_host ON grants (host, until)",
)

# who revoked a grant: SQLite adds the column only where it is missing (it has no IF NOT EXISTS)
SCHEMA_9_COLUMN = "revoked_by"
SQLITE_SCHEMA_9 = "ALTER TABLE grants ADD COLUMN revoked_by TEXT NOT NULL DEFAULT ''"
POSTGRES_SCHEMA_9 = "ALTER TABLE grants ADD COLUMN IF NOT EXISTS revoked_by TEXT NOT NULL DEFAULT ''"

INSERT = f"INSERT INTO grants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 (fixed)
SELECT = f"SELECT {_COLUMNS} FROM grants"  # noqa: S608 (fixed)
SELECT_6 = f"SELECT {_COLUMNS_6}, '' FROM grants"  # noqa: S608 (a read-only view of schema 6 to 8)
ORDER = " ORDER BY granted_at, id"
# (revoked_at, revoked_by, id): one revocation only; the revoked row comes back, none when there was
# nothing to revoke
REVOKE = (f"UPDATE grants SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at = ''"  # noqa: S608
          f" RETURNING {_COLUMNS}")


def record(row: Any) -> GrantRecord:
    """A GrantRecord from a row in `_COLUMNS` order."""
    return GrantRecord(*(str(v) for v in row))


def row(grant: GrantRecord) -> tuple[str, ...]:
    """The INSERT parameters of a grant (host lower case)."""
    return (grant.id, grant.host.lower(), grant.user, grant.device, grant.granted_by, grant.note,
            grant.granted_at, grant.until, grant.revoked_at, grant.signature, grant.revoked_by)
