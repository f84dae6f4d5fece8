"""PolicyLog on a real PostgreSQL: what the fleet's evaluator reads and commits on its lock's session."""

from __future__ import annotations

import psycopg
import pytest

from collector.store import open_store, pgconnect
from collector.store.leadership import Leadership
from collector.store.policylog import PolicyLog, Step
from tests.helpers import make_events
from tests.pg import PgCluster


def test_cursors_start_at_what_was_stored_and_steps_go_round_the_agents(pg_url: str) -> None:
    store = open_store(pg_url)
    lead = Leadership(pg_url, "policy evaluator")
    try:
        store.ingest("a-old", make_events("a-old", 1, 5))  # before any evaluator: not evaluated again
        assert lead.try_acquire() and lead.connection is not None
        conn, log = lead.connection, PolicyLog(pg_url)
        log.ensure(conn)
        log.ensure(conn)  # idempotent
        assert PolicyLog.caught_up(conn) == 1
        for agent in ("b", "c", "d"):
            store.ingest(agent, make_events(agent, 1, 3))
        store.ingest("a-old", make_events("a-old", 6, 6))
        first = log.pending(conn, "", agents=2, per_agent=2, total=100)
        assert [(a, s) for a, s, _ in first] == [("a-old", 6), ("b", 1), ("b", 2)]
        log.commit(conn, Step(cursors={"a-old": 6, "b": 2}))
        second = log.pending(conn, "b", agents=2, per_agent=2, total=100)  # after b first, then round
        assert [(a, s) for a, s, _ in second] == [("c", 1), ("c", 2), ("d", 1), ("d", 2)]
        log.commit(conn, Step(cursors={"c": 3, "d": 3, "b": 1}))  # a cursor never moves back
        assert [(a, s) for a, s, _ in log.pending(conn, "", 10, 10, 100)] == [("b", 3)]
        assert PolicyLog.caught_up(conn) == 3
        store.ingest("c", make_events("c", 4, 6))
        conn.execute("DELETE FROM events WHERE agent_id = 'c' AND sequence = 4")  # pruned, unevaluated
        assert [(a, s) for a, s, _ in log.pending(conn, "c", 10, 10, 100)] == [("b", 3), ("c", 5), ("c", 6)]
    finally:
        lead.release()
        store.close()


def test_a_step_commits_alerts_cursors_and_windows_together_or_not_at_all(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    store = open_store(pg_url)
    lead = Leadership(pg_url, "policy evaluator")
    try:
        store.ingest("a", make_events("a", 1, 4))
        assert lead.try_acquire() and lead.connection is not None
        conn, log = lead.connection, PolicyLog(pg_url)
        log.ensure(conn)
        alert = {"id": "al-1", "@timestamp": "2026-01-01T00:00:00.000000Z", "policy.id": "p", "severity": "x"}
        log.commit(conn, Step(alerts=[alert], cursors={"a": 0}, windows={'["p", "u"]': (9.5, "{}")},
                              owed=[("webhook:1", "al-1")]))  # fmt: skip
        assert [(k, a["id"]) for k, a in store.owed(["webhook:1"])] == [("webhook:1", "al-1")]
        assert log.windows(conn) == [('["p", "u"]', 9.5, "{}")]
        log.commit(conn, Step(alerts=[alert], closed={'["p", "u"]'}))  # the same alert id: stored once
        assert log.windows(conn) == [] and len(store.alerts()) == 1
        store.ingest("a", make_events("a", 5, 6))
        with pg_cluster.admin() as admin:  # the lock's session lost between reading and committing
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        late = {**alert, "id": "al-2"}
        with pytest.raises(psycopg.Error):
            log.commit(conn, Step(alerts=[late], cursors={"a": 6}, owed=[("webhook:1", "al-2")]))
        assert [a["id"] for a in store.alerts()] == ["al-1"]
        assert [a["id"] for _, a in store.owed(["webhook:1"])] == ["al-1"]
        assert lead.try_acquire() and lead.connection is not None
        # 1..4 were stored before the first evaluator (its cursor started at 4); 5..6 are still due.
        assert [s for _, s, _ in log.pending(lead.connection, "", 10, 10, 100)] == [5, 6]
    finally:
        lead.release()
        store.close()


def test_posted_events_wait_for_the_evaluator_and_leave_with_its_step(pg_url: str) -> None:
    store = open_store(pg_url)
    poster = pgconnect.connect(pg_url)  # a standby's session: the evaluator's tables need not exist yet
    lead = Leadership(pg_url, "policy evaluator")
    try:
        PolicyLog.post(poster, ['{"event.action": "agent.silent", "agent.id": "a"}', '{"n": 2}'])
        assert lead.try_acquire() and lead.connection is not None
        conn, log = lead.connection, PolicyLog(pg_url)
        log.ensure(conn)
        posted = PolicyLog.inbox(conn, 10)
        assert [body for _, body in posted][1] == '{"n": 2}'
        log.commit(conn, Step(taken=[posted[0][0]]))
        assert [i for i, _ in PolicyLog.inbox(conn, 10)] == [posted[1][0]]
    finally:
        poster.close()
        lead.release()
        store.close()
