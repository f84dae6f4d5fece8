"""The fleet's one policy evaluator: several collectors on one PostgreSQL fire each alert once.

Every collector's policy process runs a FleetEvaluator; the one holding the `policy evaluator`
leadership (a session-level advisory lock, collector/store/leadership.py) evaluates, the others
stand by and ask again every second. The leader does not evaluate what its own collector pipes
to it: it reads the shared event log (collector/store/policylog.py), per agent from its cursor up
to `chains.stored`, so events taken by any collector meet the same windows, sequences and
suppression, and a user's window spans hosts and collectors.

One step: read what is new (at most PER_STEP events, PER_AGENT of each agent, AGENTS_PER_STEP
agents, going round the agents in id order so none starves), evaluate it in
event-time order (each agent's in sequence order), then commit the alerts, the cursors and the
suppression windows it changed in one transaction on the lock's session (with the deliveries the
sinks owe, collector/store/outbox.py), and only then hand the alerts to the sinks. A step whose
session was lost cannot commit: its alerts are dropped and the engine forgets everything, and
whoever takes the lock next (this process or another) takes over.

Taking over: make the tables if none exist, rebuild the windows from the stored events up to the
cursors (the last `policy_rebuild_hours`, at most the longest window), open the saved
suppression windows again, and continue from the cursors. Nothing committed is evaluated twice,
nothing stored is skipped.

On SQLite there is one collector: nothing here runs, the pipe feeds the engine as before.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from google.protobuf.message import DecodeError

from collector.alerts.alert import RaisedAlert
from collector.config import CollectorConfig
from collector.policy.listener import PolicyListener
from collector.store import pgconnect
from collector.store.base import StoreError, StoreUnavailable
from collector.store.leadership import Leadership
from collector.store.policylog import PolicyLog, Step
from collector.store.rows import stored_mapping
from common.ecstime import ecs_time_at
from protos import exfilguard_pb2 as pb
from protos.events import EventView

log = logging.getLogger("exfilguard.collector.policy")

ROLE = "policy evaluator"
POLL_SECONDS = 0.2  # how often the leader looks for new events (alert latency gains up to this)
STANDBY_SECONDS = 1.0  # how often a standby asks for the lead
PER_AGENT = 500
PER_STEP = 5_000
AGENTS_PER_STEP = 2_000
INBOX_PER_STEP = 1_000
FOLLOW_UP_SECONDS = 1.0  # suppression follow-ups go out within about this long of their window closing

Fields = EventView | dict[str, Any]


class FleetEvaluator:
    """Evaluates the shared event log when this collector leads (see the module docstring)."""

    def __init__(self, config: CollectorConfig, listener: PolicyListener) -> None:
        self.listener = listener
        self.location = config.store
        self.lead = Leadership(config.store, ROLE)
        self.policy_log = PolicyLog(config.store)
        self.rebuild_hours = config.policy_rebuild_hours
        self.leading = False
        self.takeovers = 0
        self.lost_steps = 0
        self.evaluated = 0
        self._mappings: list[dict[str, Any]] = []
        self._followed_at = 0.0
        self._mark = ""  # the last agent a step cut short served: the next one begins after it
        self._stopping = False
        self._poster: pgconnect.Connection | None = None  # a standby's session for policy_inbox
        self._task: asyncio.Task[None] | None = None
        listener.follow_ups = False  # they are the leader's, committed like any alert
        # Ingest never waits for this evaluator: a policy's budget is its own CPU time, not the
        # wall time a loaded host (or this process's other thread) took from it.
        listener.engine.timer = time.thread_time

    # ---------------------------------------------------------------- life

    def start(self) -> None:
        """Run the evaluator on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet-evaluator")

    async def aclose(self) -> None:
        """Finish the step under way, then give the lead up (another collector takes over at once)."""
        self._stopping = True
        if self._task is not None:
            await self._task
            self._task = None
        # What arrived since the last step: committed by a leader, evaluated by a standby.
        await asyncio.to_thread(self.step if self.leading else self._standby_mappings)
        self.lead.release()
        if self._poster is not None:
            self._poster.close()

    def on_mappings(self, mappings: list[dict[str, Any]]) -> None:
        """Collector-made events (agent.silent, claimed once fleet-wide): evaluated at the next step
        if this process leads, else posted to the store for the one that does."""
        self._mappings.extend(mappings)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                busy = await asyncio.to_thread(self.step)
            except Exception:
                log.exception("fleet policy evaluation step failed")
                await asyncio.to_thread(self._step_down)
                busy = False
            if not busy:
                await asyncio.sleep(POLL_SECONDS if self.leading else STANDBY_SECONDS)

    def stats(self) -> dict[str, Any]:
        """Figures for metrics: leading or not, takeovers, steps lost with the session, events evaluated."""
        return {
            "fleet_leading": self.leading,
            "fleet_takeovers": self.takeovers,
            "fleet_lost_steps": self.lost_steps,
            "fleet_evaluated": self.evaluated,
        }

    # ---------------------------------------------------------------- one step

    def step(self) -> bool:
        """One round (on a worker thread); True when more is waiting at once."""
        if not self.leading:
            if not self.lead.try_acquire():
                self._standby_mappings()
                return False
            try:
                self._take_over()
            except (psycopg.Error, StoreError) as exc:
                log.error("fleet policy evaluator could not take over: %s", exc)
                self._step_down()
                return False
        conn = self.lead.connection
        if conn is None:
            self._step_down()
            return False
        engine = self.listener.engine
        mappings, self._mappings = self._mappings, []
        try:
            rows = self.policy_log.pending(conn, self._mark, AGENTS_PER_STEP, PER_AGENT, PER_STEP)
            alerts: list[RaisedAlert] = []
            for event in self._in_time_order(rows):
                alerts.extend(self._evaluate(event))
            posted = self.policy_log.inbox(conn, INBOX_PER_STEP)
            for mapping in [*mappings, *(json.loads(body) for _, body in posted)]:
                alerts.extend(self._evaluate(mapping))
            now = time.time()
            if now - self._followed_at >= FOLLOW_UP_SECONDS:
                self._followed_at = now
                alerts.extend(engine.flush(max(engine.clock, now)))
            step = Step(alerts=[a.alert for a in alerts], taken=[i for i, _ in posted])
            owing = self.listener.dispatcher.owing
            step.owed = [(key, a.id) for a in alerts for key in owing(a.alert)]
            for agent, sequence, _ in rows:
                step.cursors[agent] = sequence  # rows are in sequence order per agent
            self._suppression(step)
            if step:
                self.policy_log.commit(conn, step)
        except psycopg.Error as exc:
            log.error(
                "fleet policy evaluator lost its session (%s): the step is not committed; evaluation "
                "resumes from the stored cursors under whoever leads next", exc,
            )  # fmt: skip
            self._mappings = mappings + self._mappings  # not in the store: kept for the next step
            self._step_down()
            return False
        self.evaluated += len(rows) + len(mappings) + len(posted)
        if alerts:
            self.listener.raise_alerts(alerts, stored=True)
        more = len(rows) >= PER_STEP or len(step.cursors) >= AGENTS_PER_STEP
        # A step cut short goes on after the last agent it served; one that took all begins at the start.
        self._mark = rows[-1][0] if more else ""
        return more

    def _evaluate(self, event: Fields) -> list[RaisedAlert]:
        try:
            return self.listener.engine.evaluate(event)
        except Exception:  # one odd event must not cost the rest of the step its evaluation
            log.exception("policy evaluation failed on event %s", event.get("event.id"))
            return []

    def _in_time_order(self, rows: list[tuple[str, int, bytes]]) -> Iterator[Fields]:
        per_agent: dict[str, list[Fields]] = {}
        for agent, sequence, data in rows:
            per_agent.setdefault(agent, []).append(self._view(agent, sequence, data))
        return heapq.merge(*per_agent.values(), key=_epoch)

    def _view(self, agent: str, sequence: int, data: bytes) -> Fields:
        try:
            return EventView(pb.Event.FromString(data))
        except DecodeError:
            return dict(stored_mapping(self.location, agent, sequence, data))

    def _suppression(self, step: Step) -> None:
        suppressor = self.listener.engine.suppressor
        touched = suppressor.touched
        if not touched:
            return
        for key in touched:
            group = json.dumps(list(key), default=str)
            state = suppressor.state(key)
            if state is None:
                step.closed.add(group)
                step.windows.pop(group, None)
            else:
                until, body = state
                step.windows[group] = (until, json.dumps(body, default=str))
                step.closed.discard(group)
        touched.clear()

    # ---------------------------------------------------------------- leading or not

    def _take_over(self) -> None:
        conn = self.lead.connection
        assert conn is not None
        started = time.monotonic()
        self.policy_log.ensure(conn)
        engine = self.listener.engine
        engine.reset()
        span = min(self.rebuild_hours * 3600.0, engine.longest_window())
        replayed = 0
        if span > 0:
            since = ecs_time_at(time.time() - span)
            replayed = engine.warm(self._readable(self.policy_log.evaluated(conn, since)))
        windows = self.policy_log.windows(conn)
        for group, until, state in windows:
            engine.suppressor.restore(_key(json.loads(group)), until, json.loads(state))
        engine.suppressor.touched = set()
        self.listener.resume(strict=True)  # deliveries the last leader's sinks still owed (store/outbox.py)
        self.leading = True
        self.takeovers += 1
        log.info(
            "fleet policy evaluator: this collector leads; windows rebuilt from %d stored events and %d "
            "open suppression windows in %.1fs", replayed, len(windows), time.monotonic() - started,
            extra={"events": replayed, "suppression_windows": len(windows)},
        )  # fmt: skip

    @staticmethod
    def _readable(stored: Iterator[bytes]) -> Iterator[EventView]:
        for data in stored:
            try:
                yield EventView(pb.Event.FromString(data))
            except DecodeError:
                continue  # evaluated (and logged) as unreadable when it was new: nothing to rebuild

    def _step_down(self) -> None:
        if self.leading:
            self.lost_steps += 1
        self.leading = False
        self.lead.release()
        self.listener.engine.reset()  # ahead of what was committed: the next leader starts from the store

    def _standby_mappings(self) -> None:
        # What this collector made (agent-silent is claimed once fleet-wide, by whichever collector
        # saw the silence) goes to the evaluator through the store, so it meets the same sequences
        # and suppression; kept here while the store cannot take it.
        mappings, self._mappings = self._mappings, []
        if not mappings:
            return
        try:
            if self._poster is None or self._poster.closed:
                self._poster = pgconnect.connect(self.location, application="exfilguard policy inbox")
            self.policy_log.post(self._poster, [json.dumps(m, default=str) for m in mappings])
        except (psycopg.Error, StoreUnavailable) as exc:
            log.warning("could not post %d event(s) for the fleet's evaluator yet: %s", len(mappings), exc)
            self._mappings = mappings + self._mappings
            if self._poster is not None:
                self._poster.close()
            self._poster = None


def _epoch(event: Fields) -> float:
    if isinstance(event, EventView):
        return event.epoch() or 0.0
    return 0.0


def _key(value: Any) -> Any:
    """A group key read back from JSON: lists become the tuples the engine made."""
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    return value
