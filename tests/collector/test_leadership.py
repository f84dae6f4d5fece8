"""Leadership on a real PostgreSQL cluster: one holder per name, handed over when its session dies."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from collector.store import pgconnect
from collector.store.leadership import RETRY_FIRST, Leadership, led, lock_key
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


def test_release_unlocks_so_the_next_leader_takes_over_at_once(pg_url: str) -> None:
    """Closing alone leaves the lock to the server process's exit, which the next ask could beat."""
    leads = [Leadership(pg_url, "forward:siem"), Leadership(pg_url, "forward:siem")]
    watcher = pgconnect.connect(pg_url)
    try:
        for turn in range(20):
            holder, next_one = leads[turn % 2], leads[(turn + 1) % 2]
            assert holder.try_acquire(), turn
            holder.release()
            assert not led(watcher, "forward:siem"), turn  # unlocked before release() returned
            assert next_one.try_acquire(), turn
            next_one.release()
    finally:
        watcher.close()
        for lead in leads:
            lead.release()


def test_a_standby_asks_again_on_its_own_session(pg_url: str) -> None:
    leader, standby = Leadership(pg_url, "policy evaluator"), Leadership(pg_url, "policy evaluator")
    watcher = pgconnect.connect(pg_url)
    sessions = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'exfilguard leadership policy evaluator'"
    )
    try:
        assert leader.try_acquire()
        assert not any(standby.try_acquire() for _ in range(5))
        assert standby.connects == 1 and standby.connection is None
        assert len(watcher.execute(sessions).fetchall()) == 2  # the leader's and the standby's, no more
        leader.release()
        assert standby.try_acquire() and standby.connection is not None and standby.connects == 1
    finally:
        watcher.close()
        leader.release()
        standby.release()


def test_a_standby_that_cannot_connect_backs_off(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on: every connect is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lead = Leadership(f"postgresql://exfilguard@127.0.0.1:{port}/exfilguard", "policy evaluator")
    tried: list[float] = []
    deadline = time.monotonic() + 6 * RETRY_FIRST
    while len(tried) < 3 and time.monotonic() < deadline:
        assert not lead.try_acquire()
        if lead.connects > len(tried):
            tried.append(time.monotonic())
        time.sleep(0.02)  # a caller asking far more often than every second
    assert len(tried) == 3, tried
    first, second = tried[1] - tried[0], tried[2] - tried[1]
    assert 0.5 * RETRY_FIRST <= first <= RETRY_FIRST + 0.2, first  # jittered
    assert second >= RETRY_FIRST - 0.05, second  # doubled
