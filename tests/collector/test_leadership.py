"""Leadership on a real PostgreSQL cluster: one holder per name, handed over when its session dies."""

from __future__ import annotations

from pathlib import Path

from collector.store.leadership import Leadership, lock_key
from tests.pg import PgCluster


def test_one_leader_per_name_and_release_hands_over(pg_url: str) -> None:
    first, second = Leadership(pg_url, "forward:siem"), Leadership(pg_url, "forward:siem")
    other = Leadership(pg_url, "policy")
    try:
        assert first.try_acquire() and first.held()
        assert first.try_acquire()  # already leading: still True, no second lock
        assert not second.try_acquire() and not second.held()
        assert other.try_acquire()  # another name is another lock
        first.release()
        assert not first.held()
        assert second.try_acquire() and second.held()
        assert not first.try_acquire()
    finally:
        for lead in (first, second, other):
            lead.release()


def test_a_lost_session_is_noticed_and_the_lock_passes_on(pg_cluster: PgCluster, pg_url: str) -> None:
    first, second = Leadership(pg_url, "forward:siem"), Leadership(pg_url, "forward:siem")
    try:
        assert first.try_acquire()
        with pg_cluster.admin() as admin:  # the leader's connection dies, as when its host does
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'exfilguard leadership forward:siem'"
            ).fetchall()
        assert killed == [(True,)]
        assert not first.held()
        assert second.try_acquire() and second.held()
    finally:
        first.release()
        second.release()


def test_sqlite_always_leads(tmp_path: Path) -> None:
    lead = Leadership(str(tmp_path / "store.db"), "forward:siem")
    assert lead.try_acquire() and lead.held()
    lead.release()
    assert lead.held()


def test_keys_are_stable_signed_bigints() -> None:
    keys = {lock_key(f"forward:{n}") for n in range(1000)}
    assert len(keys) == 1000
    assert all(-(1 << 63) <= k < (1 << 63) for k in keys)
    assert lock_key("policy") == lock_key("policy")


def test_a_leaders_session_notices_a_vanished_peer_within_seconds(pg_url: str) -> None:
    """Keepalives on both ends: a holder cut off by the network loses the lock in about 25 s, not
    after the kernel's two hours, and its own statements fail rather than hang."""
    lead = Leadership(pg_url, "policy evaluator")
    try:
        assert lead.try_acquire() and lead.connection is not None
        conn = lead.connection
        server = [conn.execute(f"SHOW {name}").fetchone() for name in
                  ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")]  # fmt: skip
        assert server == [("10",), ("5",), ("3",)]
        assert conn.info.get_parameters()["keepalives_idle"] == "10"
        assert conn.info.get_parameters()["tcp_user_timeout"] == "25000"
    finally:
        lead.release()
