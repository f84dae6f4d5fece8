"""What only the PostgreSQL store has: a server to reach, passwords, and several collectors at once.

The shared contract (tests/collector/test_store.py) covers the semantics; these cover the
connection and concurrency, against the session's throwaway cluster (tests/pg.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from collector.store import StoreCorrupt, StoreUnavailable, open_store
from collector.store.postgres import PostgresStore
from protos import chain
from tests.e2e.harness import free_port
from tests.helpers import make_events
from tests.pg import ROLE, PgCluster


def _location(cluster: PgCluster, database: str) -> str:
    return f"postgresql://127.0.0.1:{cluster.port}/{database}"


def test_wrong_password_names_host_and_database_never_the_password(pg_cluster: PgCluster) -> None:
    database = pg_cluster.create_database()
    with pytest.raises(StoreUnavailable) as err:
        open_store(pg_cluster.url(database, password="not-the-S3cret"))  # noqa: S106 (a wrong one)
    assert err.value.location == _location(pg_cluster, database)
    assert "authentication failed" in err.value.message and ROLE in err.value.message
    assert "not-the-S3cret" not in str(err.value)


def test_missing_database_and_server_down_say_so(pg_cluster: PgCluster) -> None:
    with pytest.raises(StoreUnavailable) as err:
        open_store(pg_cluster.url("no_such_db"))
    assert "no such database" in err.value.message
    assert pg_cluster.password not in str(err.value)
    port = free_port()
    url = f"postgresql://{ROLE}:{pg_cluster.password}@127.0.0.1:{port}/exfilguard"
    with pytest.raises(StoreUnavailable) as down:
        open_store(url)
    assert down.value.location == f"postgresql://127.0.0.1:{port}/exfilguard"
    assert "server not reachable" in down.value.message
    assert pg_cluster.password not in str(down.value)


def test_password_from_pgpassword_or_a_passfile(
    pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = pg_cluster.create_database()
    bare = pg_cluster.url(database, password=None)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # not the runner's ~/.pgpass
    with pytest.raises(StoreUnavailable) as err:
        open_store(bare)
    assert "authentication failed" in err.value.message
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    open_store(bare).close()
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_cluster.port}:{database}:{ROLE}:{pg_cluster.password}\n")
    passfile.chmod(0o600)
    open_store(f"{bare}?passfile={passfile}").close()


def test_empty_database_read_only_and_newer_schema_are_refused(pg_cluster: PgCluster) -> None:
    url = pg_cluster.url(pg_cluster.create_database())
    with pytest.raises(StoreCorrupt) as err:
        open_store(url, readonly=True)
    assert "no schema" in err.value.message
    open_store(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE exfilguard_schema SET version = 99")
    with pytest.raises(StoreCorrupt) as newer:
        open_store(url)
    assert "99" in newer.value.message


def test_a_read_only_store_cannot_write_even_by_mistake(pg_url: str) -> None:
    open_store(pg_url).close()
    reader = open_store(pg_url, readonly=True)
    assert isinstance(reader, PostgresStore)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        reader._db.execute("DELETE FROM events")  # the session itself is read-only, not only the API
    reader.close()


def test_two_collectors_ingesting_the_same_agent_store_each_event_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    events = make_events("a", 1, 400)
    failures: list[BaseException] = []

    def feed(store: PostgresStore, offset: int) -> None:
        try:
            for start in range(offset, 400, 20):  # overlapping, out-of-order batches from both
                store.ingest_batches([("a", events[start : start + 40])], seal=False)
            store.seal()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=feed, args=(s, n * 10)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert stores[1].watermark("a") == 400 and stores[1].count_events("a") == 400
    prev = chain.GENESIS
    for mapping in stores[1].events():
        prev = chain.link(prev, mapping)
        assert mapping["exfilguard.chain.hash"] == prev.hex()
    assert stores[0].chain_head("a") == (400, prev)
    for store in stores:
        store.close()


def test_a_restarted_server_is_reconnected_to(pg_cluster: PgCluster) -> None:
    url = pg_cluster.url(pg_cluster.create_database())
    store = open_store(url)
    store.ingest("a", make_events("a", 1, 3))
    with pg_cluster.admin() as admin:  # what a server restart or failover does to our session
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ROLE,))
    with pytest.raises(StoreUnavailable):
        store.ingest("a", make_events("a", 4, 6))  # this batch is not acknowledged; the agent resends
    assert store.ingest("a", make_events("a", 4, 6)) == 6
    store.close()


def test_chain_rows_gone_under_a_running_collector_are_started_again(
    pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture,
) -> None:
    """A restore or a failover to a copy without them: ingest goes on (it raised KeyError, so
    every batch of that agent failed as UNKNOWN, for good)."""
    database = pg_cluster.create_database()
    store = open_store(pg_cluster.url(database))
    assert store.ingest("a", make_events("a", 1, 3)) == 3
    with psycopg.connect(host=str(pg_cluster.socket_dir), port=pg_cluster.port, user="postgres",
                         dbname=database, autocommit=True) as admin:
        # The agent's history as of a backup taken before it first spoke.
        admin.execute("TRUNCATE events, chain_values, chains, agents, evidence_checkpoints")
    assert store.ingest("a", make_events("a", 4, 6)) == 0  # what it holds now: 4..6 above a hole
    assert store.ingest("a", make_events("a", 1, 3)) == 6  # an agent resends nothing acked; a test can
    assert "chain rows missing for 1 agents" in caplog.text
    store.close()


@pytest.mark.parametrize(
    ("url", "location"),
    [
        (
            "postgresql://u:S3cret-pw@db.invalid:5433/exfil?sslmod=require",
            "postgresql://db.invalid:5433/exfil",
        ),
        ("postgres://u:S3cret-pw@[::1/exfil", "postgresql://(unreadable URL)"),  # libpq quotes it back
    ],
)
def test_a_url_libpq_refuses_is_named_without_its_password(url: str, location: str) -> None:
    with pytest.raises(StoreUnavailable) as err:
        open_store(url)
    assert err.value.location == location
    assert "S3cret-pw" not in str(err.value)
