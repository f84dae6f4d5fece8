"""Where the collector keeps events, alerts and the fleet registry, behind one `Store` interface."""

from __future__ import annotations

from collector.store.base import (
    AgentRecord,
    AgentUpdate,
    AlertFilter,
    CollectorRecord,
    EventFilter,
    IngestResult,
    Store,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "AgentRecord",
    "AgentUpdate",
    "AlertFilter",
    "CollectorRecord",
    "EventFilter",
    "IngestResult",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "is_postgres",
    "open_store",
]


def is_postgres(location: str) -> bool:
    """True when the config's `store` names a PostgreSQL database rather than a SQLite file."""
    return location.startswith(("postgresql://", "postgres://"))


def open_store(location: str, *, readonly: bool = False) -> Store:
    """The store named by the config's `store` key: a path means SQLite, postgresql://… PostgreSQL."""
    if is_postgres(location):
        from collector.store.postgres import PostgresStore  # psycopg loads only when it is used

        return PostgresStore(location, readonly=readonly)
    from collector.store.sqlite import SqliteStore

    return SqliteStore(location, readonly=readonly)
