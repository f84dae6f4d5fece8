"""The shared event log as the fleet's policy evaluator reads it, and the state it commits (PostgreSQL).

Several collectors share one PostgreSQL store; one of them evaluates policies for the whole
fleet (collector/policy/fleet.py). Its state in the store:

- `policy_cursors`: per agent, the last sequence evaluated. Events are read per agent in sequence
  order up to `chains.stored` (every sequence up to it is stored, whichever collector took it),
  so a cursor never passes a hole a resend will still fill.
- `policy_suppression`: the open suppression windows (one row per group key), so a new evaluator
  folds repeats into the windows its predecessor opened and sends their follow-ups.
- `policy_inbox`: events a collector made itself (agent.silent) and that are not in the event log,
  posted by a standby collector for the evaluator, which takes them in its next step.

Every call takes the connection of the evaluator's leadership session: `commit` writes a step's
alerts (with the deliveries the sinks owe them, store/outbox.py), cursors and suppression rows in
one transaction there, so a step whose session (and with
it the lock) was lost cannot commit, and a committed step is never evaluated again.
The tables are made by the first evaluator; cursors then start at every agent's stored prefix,
so a store that was already in use is not re-evaluated from its first event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from collector.store import outbox
from collector.store.pgconnect import Connection
from collector.store.sql import POSTGRES, alert_row

_EXISTS = "SELECT to_regclass('policy_cursors') IS NOT NULL"
_INBOX = "CREATE TABLE IF NOT EXISTS policy_inbox (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)"
_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS policy_cursors (agent_id TEXT COLLATE "C" PRIMARY KEY,'
    " sequence BIGINT NOT NULL)",
    'CREATE TABLE IF NOT EXISTS policy_suppression (grp TEXT COLLATE "C" PRIMARY KEY,'
    " until DOUBLE PRECISION NOT NULL, state TEXT NOT NULL)",
    _INBOX,
)
_START_CURSORS = "INSERT INTO policy_cursors (agent_id, sequence) SELECT agent_id, stored FROM chains"
# (mark, agents, per_agent, total): events after each agent's cursor up to its stored prefix, each
# agent's in order, from at most `agents` agents taken in id order after `mark` and then from the
# start (so a busy agent early in the order never starves the rest). The agents are chosen (and
# sorted) first; the events are then read per agent, in that order, until `total`.
_PENDING = (
    "SELECT a.agent_id, a.done, e.sequence, e.data FROM (SELECT c.agent_id, c.stored,"
    " COALESCE(p.sequence, 0) AS done FROM chains c LEFT JOIN policy_cursors p ON p.agent_id = c.agent_id"
    " WHERE c.stored > COALESCE(p.sequence, 0) ORDER BY c.agent_id <= %s, c.agent_id LIMIT %s) a"
    " CROSS JOIN LATERAL (SELECT sequence, data FROM events e WHERE e.agent_id = a.agent_id"
    " AND e.sequence > a.done AND e.sequence <= a.stored ORDER BY e.sequence LIMIT %s) e LIMIT %s"
)
# (since,): what the windows hold at the cursors: evaluated events newer than `since`.
_EVALUATED = (
    "SELECT e.data FROM events e JOIN policy_cursors p ON p.agent_id = e.agent_id"
    " WHERE e.sequence <= p.sequence AND e.ts >= %s ORDER BY e.ts, e.agent_id, e.sequence"
)
_CAUGHT_UP = (
    "SELECT count(*) FROM chains c JOIN policy_cursors p USING (agent_id) WHERE p.sequence >= c.stored"
)
_SAVE_CURSOR = (
    "INSERT INTO policy_cursors (agent_id, sequence) VALUES (%s, %s) ON CONFLICT (agent_id)"
    " DO UPDATE SET sequence = excluded.sequence WHERE excluded.sequence > policy_cursors.sequence"
)
_ADD_ALERT = (
    "INSERT INTO alerts (id, ts, policy_id, severity, body) VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING"
)
_SAVE_WINDOW = (
    "INSERT INTO policy_suppression (grp, until, state) VALUES (%s, %s, %s) ON CONFLICT (grp)"
    " DO UPDATE SET until = excluded.until, state = excluded.state"
)
_DROP_WINDOW = "DELETE FROM policy_suppression WHERE grp = %s"


@dataclass
class Step:
    """What one evaluation step commits: alerts, cursor moves, suppression windows saved or closed,
    inbox rows taken."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)
    windows: dict[str, tuple[float, str]] = field(default_factory=dict)  # group -> (until, state)
    closed: set[str] = field(default_factory=set)
    taken: list[int] = field(default_factory=list)  # policy_inbox ids
    owed: list[tuple[str, str]] = field(default_factory=list)  # (sink, alert id): store/outbox.py

    def __bool__(self) -> bool:
        return bool(self.alerts or self.cursors or self.windows or self.closed or self.taken)


class PolicyLog:
    """Reads of the shared event log and the evaluator's commits, on its leadership session."""

    def __init__(self, location: str) -> None:
        self.location = location

    def ensure(self, conn: Connection) -> None:
        """Make the tables once (cursors start at the stored prefixes); under the evaluator's lock."""
        with conn.transaction():
            row = conn.execute(_EXISTS).fetchone()
            if row is not None and row[0]:
                conn.execute(_INBOX)
                return
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(_START_CURSORS)

    def pending(
        self, conn: Connection, mark: str, agents: int, per_agent: int, total: int
    ) -> list[tuple[str, int, bytes]]:
        """(agent id, sequence, stored bytes) of events not evaluated yet, agents in id order after
        `mark` first, each agent's events in order."""
        rows = conn.execute(_PENDING, (mark, agents, per_agent, total)).fetchall()
        # Each agent's events run on without a hole, whatever order the server returned them in:
        # what does not is left for the next step. The first may lie beyond the cursor + 1 only
        # when retention pruned what the evaluator had not reached (it was down for that long):
        # those are gone, and waiting for them would stop the agent's evaluation for good.
        out: list[tuple[str, int, bytes]] = []
        last: dict[str, int] = {}
        for agent, done, seq, data in sorted(rows, key=lambda r: (r[0] <= mark, r[0], r[2])):
            previous = last.get(agent)
            if (previous is None and int(seq) > int(done)) or int(seq) == (previous or 0) + 1:
                last[agent] = int(seq)
                out.append((str(agent), int(seq), bytes(data)))
        return out

    def evaluated(self, conn: Connection, since: str) -> Iterator[bytes]:
        """Stored bytes of evaluated events (at or below the cursors) from `since` (ECS time), by time."""
        with conn.transaction(), conn.cursor(name="policy_rebuild") as cur:
            cur.itersize = 2000
            cur.execute(_EVALUATED, (since,))
            for (data,) in cur:
                yield bytes(data)

    @staticmethod
    def caught_up(conn: Connection) -> int:
        """Agents whose every stored event was evaluated (0 before the first evaluator made its tables)."""
        if not (row := conn.execute(_EXISTS).fetchone()) or not row[0]:
            return 0
        row = conn.execute(_CAUGHT_UP).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def post(conn: Connection, bodies: list[str]) -> None:
        """Leave events (JSON mappings) for the evaluator, whoever leads now or next."""
        with conn.transaction():
            conn.execute(_INBOX)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO policy_inbox (body) VALUES (%s)", [(b,) for b in bodies])

    @staticmethod
    def inbox(conn: Connection, limit: int) -> list[tuple[int, str]]:
        """(id, body) of posted events, oldest first; `Step.taken` removes them with the step."""
        rows = conn.execute("SELECT id, body FROM policy_inbox ORDER BY id LIMIT %s", (limit,)).fetchall()
        return [(int(i), str(b)) for i, b in rows]

    def windows(self, conn: Connection) -> list[tuple[str, float, str]]:
        """(group, until, state) of every open suppression window."""
        rows = conn.execute("SELECT grp, until, state FROM policy_suppression").fetchall()
        return [(str(g), float(u), str(s)) for g, u, s in rows]

    def commit(self, conn: Connection, step: Step) -> None:
        """Everything a step wrote, in one transaction on the leadership session (psycopg.Error if lost)."""
        with conn.transaction(), conn.cursor() as cur:
            if step.alerts:
                cur.executemany(_ADD_ALERT, [alert_row(self.location, a) for a in step.alerts])
            if step.owed:
                cur.executemany(POSTGRES.sql(outbox.OWE), step.owed)
            if step.cursors:
                cur.executemany(_SAVE_CURSOR, sorted(step.cursors.items()))
            if step.windows:
                cur.executemany(_SAVE_WINDOW, [(g, u, s) for g, (u, s) in sorted(step.windows.items())])
            if step.closed:
                cur.executemany(_DROP_WINDOW, [(g,) for g in sorted(step.closed)])
            if step.taken:
                cur.execute("DELETE FROM policy_inbox WHERE id = ANY(%s)", (step.taken,))
