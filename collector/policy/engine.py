"""Evaluate stage, part 2: PolicyEngine runs a compiled policy set over events as they arrive.

    engine = PolicyEngine(loader.load(["policies/"]), timezone="Europe/Berlin")
    alerts = engine.evaluate(mapping)        # protos.events.EventView (lazy) or to_mapping's dict
    alerts += engine.flush()                 # folded repeats whose suppression window closed

No server needed: `policy test`, the benchmarks and the collector's PolicyListener all use it.
Policies are indexed by the event.action values they can match, so an event meets only the
policies that may fire on it. Window state is bounded (see windows.py); restart recovery is a
replay of recent stored events through `warm()` (alerts are not raised again while warming).

Evaluation has a budget per event, so no policy can stall ingest (regexes already run in linear
time; this bounds whatever else is slow): once an event's policies have taken longer than the
budget, the rest are skipped for that event, and a policy whose own evaluation of one event took
longer than the budget SUSPEND_STRIKES times within STRIKE_WINDOW_SECONDS is suspended for
SUSPEND_SECONDS. The budget is watched on wall time (a CPU clock costs a system call per read, and
once per event that was 6% of the pack's cost: it is read at most once a CPU_MARK_SECONDS of wall
time) and judged, once past it, on the CPU time the thread had since that mark: on a busy
host an event waited half a second for a CPU and its remaining policies (usb-copy-whole-collection
among them) were skipped. A single stall must not switch a policy off either, which for a DLP
would be a blind spot an insider could provoke. Both are counted per policy
(`skipped_by_policy`, a metric) and logged as warnings, at most once a minute each. Time spent
in the interpreter's garbage collections is not counted: a full collection walks every object
the process holds (open windows, folded alerts) and took up to a second with a large state,
a pause of the process that no policy caused.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector.alerts import alert as alert_mod
from collector.alerts.alert import RaisedAlert
from collector.alerts.suppress import Suppressor
from collector.behaviour.enrich import Behaviour
from collector.policy import conditions, fields, fused, reads, runner, summary
from collector.policy.model import Policy, PolicySet
from collector.policy.windows import (
    AggregateWindow,
    CoverageWindow,
    Firing,
    Inventory,
    Limits,
    SequenceWindow,
    group_value,
)
from common.ecstime import ecs_time_at
from protos.events import EventView

log = logging.getLogger(__name__)

EventFields = Mapping[str, Any]

# Events dated further than this past the collector's clock are treated as "now": one agent with a
# wrong clock must not expire every other agent's windows.
MAX_FUTURE_SKEW_SECONDS = 300.0
SWEEP_EVERY = 4096  # events between sweeps of expired groups
MAX_INVENTORIES = 100_000  # (agent, tag) pairs remembered
GAP_MEMORY_SECONDS = 86_400.0  # alerts mention events an agent lost in the last day
INVENTORY_ACTION = "agent.inventory"
GAP_ACTION = "agent.gap"
DEFAULT_BUDGET_SECONDS = 0.25  # evaluation time one event may take across its policies
SUSPEND_STRIKES = 3  # overruns by one policy alone, within STRIKE_WINDOW_SECONDS, that suspend it
STRIKE_WINDOW_SECONDS = 60.0
SUSPEND_SECONDS = 60.0  # how long a suspended policy sits out
SKIP_LOG_SECONDS = 60.0  # at most one warning a minute about skipped evaluations
CPU_MARK_SECONDS = 0.001  # how stale the thread's CPU clock may be when an event begins


# Seconds the process has spent in garbage collections so far (wall time), and when the current
# one started: the budget leaves them out (see the module docstring).
_PAUSED = [0.0, 0.0]


def _collecting(phase: str, _info: dict[str, int]) -> None:
    if phase == "start":
        _PAUSED[1] = time.perf_counter()
    else:
        _PAUSED[0] += time.perf_counter() - _PAUSED[1]


gc.callbacks.append(_collecting)


def event_time(event: EventFields) -> float | None:
    """@timestamp as epoch seconds, or None when absent or malformed."""
    text = event.get("@timestamp")
    if not isinstance(text, str):
        return None
    # ECS form "2026-11-18T10:00:00.123456Z": the whole seconds repeat across a batch, so they are
    # parsed once and cached; the fraction is added by hand.
    head, dot, tail = text.partition(".")
    if dot and len(tail) == 7 and tail[-1] == "Z" and tail[:6].isdigit():
        seconds = _seconds(head)
        if seconds is not None:
            return seconds + int(tail[:6]) / 1e6
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _seconds(head: str) -> float | None:
    return _parse(head + "Z")


def _parse(text: str) -> float | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@dataclass(slots=True)  # slots: the evaluation loop reads four attributes per policy and event
class _Compiled:
    policy: Policy
    when: conditions.Predicate
    excepted: conditions.Predicate | None  # true when any exception applies (None: the policy has none)
    steps: tuple[conditions.Predicate, ...]
    window: AggregateWindow | CoverageWindow | SequenceWindow | None
    by: tuple[str, ...] = ()  # the grouping fields (aggregate, sequence, or suppress for single events)
    plain_key: bool = True  # no list field among `by`: the key is the values as they are
    reads_risk: bool = False  # tests exfilguard.risk.*: its alerts must not feed the score they read
    run: runner.Runner = runner.nothing  # what the policy does with an event its `when` matched
    fire: fused.Fire = runner.nothing  # when, exceptions and run in one, on a stored event's view


def _shape(policy: Policy) -> tuple[Any, ...]:
    """What window state depends on: state survives a reload only if this is unchanged."""
    if policy.aggregate:
        agg = policy.aggregate
        cov = agg.coverage
        return (
            "aggregate",
            agg.by,
            agg.window,
            tuple((m.kind, m.field) for m in agg.measures),
            (cov.of, cov.tags, cov.tag_field, cov.path_field) if cov else None,
        )
    if policy.sequence:
        seq = policy.sequence
        return ("sequence", seq.by, seq.within, tuple(s.name for s in seq.steps))
    return ("single",)


class PolicyEngine:
    """Evaluates every event against a policy set; returns alerts after suppression."""

    def __init__(
        self,
        policy_set: PolicySet,
        timezone: str = "UTC",
        limits: Limits | None = None,
        suppression_seconds: float = 600.0,
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
        *,
        behaviour: Behaviour | None = None,
    ) -> None:
        self.timezone = timezone
        self.behaviour = behaviour  # approvals, baselines, risk: fields added to each event
        self.budget = budget_seconds
        # What the budget is measured on: wall time here; the fleet's evaluator, which ingest never
        # waits for, counts its thread's CPU time, so a loaded host's stall skips nothing.
        self.timer: Callable[[], float] = time.perf_counter
        self._cpu_mark = (-math.inf, 0.0, 0)  # (timer, thread_time, thread) when last read
        self.skipped: dict[str, int] = {}  # evaluations skipped (budget or suspension), per policy id
        self._suspended: dict[str, float] = {}  # policy id -> wall time its suspension ends
        self._strikes: dict[str, list[float]] = {}  # policy id -> wall times of its recent overruns
        self._skips_unlogged = 0
        self._skip_logged_at = -math.inf
        self.limits = limits or Limits()
        self.suppressor = Suppressor(suppression_seconds)
        self.clock = 0.0  # newest event time seen (epoch seconds)
        self.inventory: dict[tuple[str, str], Inventory] = {}
        self.gaps: dict[str, list[tuple[float, int]]] = {}
        self.events_seen = 0
        self.alerts_raised = 0
        self.folded: dict[str, int] = {}  # repeats folded into an open suppression window, per policy id
        self._policies: list[_Compiled] = []
        # the pack's own after_hours macro, compiled: every alert says whether it was after hours
        self._after_hours: Callable[[EventFields], bool] | None = None
        self._by_action: dict[str, list[_Compiled]] = {}
        self._any_action: list[_Compiled] = []
        # Actions whose policies may read the risk fields (reads.needs_risk); None: every action.
        self._risk_actions: frozenset[str] | None = None
        self.policy_set = policy_set
        self.load(policy_set)

    # ---------------------------------------------------------------- the set

    @property
    def set_hash(self) -> str:
        """Hash of the running policy set (every alert records it)."""
        return self._hash

    def load(self, policy_set: PolicySet) -> None:
        """Run `policy_set` from now on; window state of unchanged policies (same id and shape) is kept."""
        old = {c.policy.id: c for c in self._policies}
        compiler = conditions.Compiler(
            {n: m.condition for n, m in policy_set.macros.items()}, policy_set.lists, self.timezone
        )
        macros = {n: m.condition for n, m in policy_set.macros.items()}
        hours = macros.get("after_hours")
        self._after_hours = compiler.compile(hours) if hours is not None else None
        compiled: list[_Compiled] = []
        by_action: dict[str, list[_Compiled]] = {}
        any_action: list[_Compiled] = []
        risk_actions: set[str] | None = set()
        for policy in policy_set.policies:
            previous = old.get(policy.id)
            window: AggregateWindow | CoverageWindow | SequenceWindow | None = None
            if previous is not None and _shape(previous.policy) == _shape(policy):
                window = previous.window
            elif policy.aggregate and policy.aggregate.coverage:
                window = CoverageWindow(policy.aggregate, self.limits)
            elif policy.aggregate:
                window = AggregateWindow(policy.aggregate, self.limits)
            elif policy.sequence:
                window = SequenceWindow(policy.sequence, self.limits)
            steps = (
                tuple(compiler.compile(s.condition) for s in policy.sequence.steps) if policy.sequence else ()
            )
            by = (
                policy.aggregate.by
                if policy.aggregate
                else policy.sequence.by
                if policy.sequence
                else policy.suppress.by
            )
            actions = self._actions(policy, macros)
            # Offered only events of these actions: the policy's own action tests are left out.
            when = policy.when
            if actions is not None:
                when = conditions.without_known_actions(when, actions, macros)
            entry = _Compiled(
                policy=policy,
                when=compiler.compile(when),
                excepted=conditions.any_of([compiler.exception(e) for e in policy.exceptions]),
                steps=steps,
                window=window,
                by=by,
                plain_key=not any(fields.is_list(f) for f in by),
                reads_risk=reads.tests_risk(policy, policy_set),
            )
            entry.run = runner.build(
                window=window,
                steps=steps,
                by=by,
                plain_key=entry.plain_key,
                inventory=self.inventory,
            )
            entry.fire = fused.build(
                policy, when, compiler, run=entry.run, window=window, by=by, plain_key=entry.plain_key
            )
            compiled.append(entry)
            if entry.when is conditions.NEVER or entry.excepted is conditions.ALWAYS:
                continue  # cannot fire, decided at load (a test against an empty list): offered nothing
            if actions is None:
                any_action.append(entry)
            else:
                for action in actions:
                    by_action.setdefault(action, []).append(entry)
            if risk_actions is not None and reads.needs_risk(policy, policy_set):
                risk_actions = None if actions is None else risk_actions | actions
        self._policies, self._by_action, self._any_action = compiled, by_action, any_action
        self._risk_actions = None if risk_actions is None else frozenset(risk_actions)
        self.policy_set = policy_set
        self._hash = policy_set.hash

    def reset(self) -> None:
        """Forget every window, inventory, gap and suppression window (the fleet evaluator lost its
        lead: what it held may be ahead of what it committed, so it starts again from the store)."""
        self._policies = []
        self.suppressor = Suppressor(self.suppressor.window)
        self.inventory.clear()
        self.gaps.clear()
        self.clock = 0.0
        self.load(self.policy_set)

    @staticmethod
    def _actions(policy: Policy, macros: dict[str, Any]) -> frozenset[str] | None:
        when = conditions.required_actions(policy.when, macros)
        if not policy.sequence:
            return when
        union: set[str] = set()
        for step in policy.sequence.steps:
            actions = conditions.required_actions(step.condition, macros)
            if actions is None:
                return when
            union |= actions
        return frozenset(union) if when is None else when & frozenset(union)

    # ---------------------------------------------------------------- events

    def evaluate(self, event: EventFields) -> list[RaisedAlert]:
        """Evaluate one event (a dotted mapping); the alerts to raise now (after suppression)."""
        return self._evaluate(event, raise_alerts=True)

    def warm(self, events: Iterable[EventFields]) -> int:
        """Rebuild window, inventory and gap state from stored events without raising alerts."""
        n = 0
        for event in events:
            self._evaluate(event, raise_alerts=False)
            n += 1
        return n

    def flush(self, now: float | None = None) -> list[RaisedAlert]:
        """Follow-up alerts for folded repeats whose suppression window has closed by `now`
        (default: the event clock; math.inf flushes everything, e.g. at the end of a replay)."""
        return self.suppressor.due(self.clock if now is None else now)

    def _evaluate(self, event: EventFields, raise_alerts: bool) -> list[RaisedAlert]:
        self.events_seen += 1
        now = event.epoch() if type(event) is EventView else event_time(event)
        wall = time.time()
        if now is None or now > wall + MAX_FUTURE_SKEW_SECONDS:
            now = wall
        if now > self.clock:  # noqa: PLR1730 - max() costs a call per event
            self.clock = now
        action = event.get("event.action", "")
        behaviour = self.behaviour if raise_alerts else None
        if behaviour is not None:
            # Not while warming: baselines come from the store (collector/behaviour/keeper.py),
            # and the replayed events are already in them.
            risk = self._risk_actions is None or action in self._risk_actions
            event = behaviour.enrich(event, now, risk=risk)
        if action == INVENTORY_ACTION:
            self._inventory(event)
        elif action == GAP_ACTION:
            self._gap(event, now)
        if self.events_seen % SWEEP_EVERY == 0:
            self.expire()
        candidates = self._by_action.get(action, ())
        if self._any_action:
            candidates = [*candidates, *self._any_action]
        alerts: list[RaisedAlert] = []
        if not candidates:
            return alerts
        clock, budget, paused = self.timer, self.budget, _PAUSED
        started = ended = clock()
        deadline = started + budget
        # Past the deadline, the thread's CPU time counts since a mark read at most CPU_MARK_SECONDS
        # before the event began: at most that much not this event's (the budget is 250 ms).
        if not 0 <= started - self._cpu_mark[0] < CPU_MARK_SECONDS:
            self._cpu_mark = (started, time.thread_time(), threading.get_ident())
        ran_before, marked_by = self._cpu_mark[1:]
        paused_before = paused_at_start = paused[0]
        suspended = self._suspended
        nothing = runner.NOTHING
        viewed = type(event) is EventView  # a stored event: each policy's fused function
        for n, entry in enumerate(candidates):
            if suspended and self._sits_out(entry.policy.id, wall):
                continue
            begun = ended
            firings: Sequence[Firing] = nothing
            if viewed:
                firings = entry.fire(event, now)
            elif entry.when(event):
                excepted = entry.excepted
                if excepted is None or not excepted(event):
                    firings = entry.run(event, now)
            ended = clock()
            over = False
            # Rare: garbage collections are not the policy's. A policy alone over the budget is
            # past the deadline too (it began after the event's evaluation started).
            if ended > deadline:  # on a busy host the waits for a CPU are not the policies'
                # a mark another thread read says nothing of this one's CPU: wall time, then
                ran = time.thread_time() - ran_before if threading.get_ident() == marked_by else math.inf
                took = min(ended - begun - (paused[0] - paused_before), ran)
                if took > budget:
                    self._overran(entry.policy.id, event, took, wall)
                spent = min(ended - started - (paused[0] - paused_at_start), ran)
                over = spent > budget and n + 1 < len(candidates)
                if over:
                    self._over_budget(candidates[n + 1 :], event, spent)
            if firings:
                if raise_alerts:
                    if behaviour is not None and behaviour.deferred is not None:
                        behaviour.complete(event)  # type: ignore[arg-type] # a view or a dict
                    self._raise_firings(entry, firings, now, alerts)
                ended = clock()  # raising the alerts is not the next policy's time
            if over:
                break
            paused_before = paused[0]
        self.alerts_raised += len(alerts)
        return alerts

    def _raise_firings(
        self, entry: _Compiled, firings: Sequence[Firing], now: float, alerts: list[RaisedAlert]
    ) -> None:
        """Alerts of a policy's firings, after suppression, appended to `alerts`."""
        for firing in firings:
            policy = entry.policy
            group = self._group(policy, firing)
            view = firing.event if type(firing.event) is EventView else None
            # A repeat inside its suppression window is only counted; its alert is built
            # (lazily) just once, for the follow-up, when the window closes.
            if self.suppressor.fold(
                group,
                firing.last,
                firing.count,
                firing.evidence,
                functools.partial(self._raise_later, policy, firing),
            ):
                self.folded[policy.id] = self.folded.get(policy.id, 0) + 1
                if view is not None:
                    # Not the view, which keeps the whole parsed batch alive, and not yet its
                    # mapping (~9 us; nearly every repeat is replaced by the next before its
                    # follow-up): a copy of its protobuf (~1 us).
                    firing.event = view.detached()
                continue
            if view is not None:
                firing.event = view.mapping()  # an alert keeps the fields, not the batch
            raised = self._raise(policy, firing)
            if self.behaviour is not None:
                self.behaviour.alerted(raised.alert, now, score=not entry.reads_risk)
            self.suppressor.admit(raised)
            alerts.append(raised)

    def _sits_out(self, policy_id: str, wall: float) -> bool:
        until = self._suspended.get(policy_id)
        if until is None:
            return False
        if wall >= until:
            del self._suspended[policy_id]
            log.warning("policy %s is evaluated again after its suspension", policy_id)
            return False
        self._skip(policy_id)
        return True

    def _skip(self, policy_id: str) -> None:
        self.skipped[policy_id] = self.skipped.get(policy_id, 0) + 1
        self._skips_unlogged += 1

    def _overran(self, policy_id: str, event: EventFields, took: float, wall: float) -> None:
        strikes = [t for t in self._strikes.get(policy_id, ()) if wall - t < STRIKE_WINDOW_SECONDS]
        strikes.append(wall)
        if len(strikes) < SUSPEND_STRIKES:
            self._strikes[policy_id] = strikes
            log.warning(
                "policy %s took %.3f s on event %s (budget %.3f s): overrun %d of %d before suspension",
                policy_id,
                took,
                event.get("event.id", "?"),
                self.budget,
                len(strikes),
                SUSPEND_STRIKES,
            )
            return
        self._strikes.pop(policy_id, None)
        self._suspended[policy_id] = wall + SUSPEND_SECONDS
        log.warning(
            "policy %s took %.3f s on event %s (budget %.3f s), %d times in %.0f s: suspended for %.0f s",
            policy_id,
            took,
            event.get("event.id", "?"),
            self.budget,
            SUSPEND_STRIKES,
            STRIKE_WINDOW_SECONDS,
            SUSPEND_SECONDS,
        )

    def _over_budget(self, rest: Iterable[_Compiled], event: EventFields, spent: float) -> None:
        ids = [entry.policy.id for entry in rest]
        for policy_id in ids:
            self._skip(policy_id)
        now = time.monotonic()
        if now - self._skip_logged_at >= SKIP_LOG_SECONDS:
            log.warning(
                "event %s used its policy budget (%.3f s of %.3f s); skipped %s; %d evaluation(s) "
                "skipped since the last such warning",
                event.get("event.id", "?"),
                spent,
                self.budget,
                ", ".join(ids),
                self._skips_unlogged,
            )
            self._skip_logged_at = now
            self._skips_unlogged = 0

    def _inventory(self, event: EventFields) -> None:
        agent = str(event.get("agent.id", ""))
        for item in event.get("exfilguard.inventory") or []:
            if not isinstance(item, Mapping) or not item.get("tag"):
                continue
            files, size = item.get("files", 0) or 0, item.get("bytes", 0) or 0
            if not isinstance(files, int) or not isinstance(size, int):
                continue  # a recorded event (policy test) may hold anything; the proto holds ints
            key = (agent, str(item["tag"]))
            if key not in self.inventory and len(self.inventory) >= MAX_INVENTORIES:
                self.inventory.pop(next(iter(self.inventory)))
            self.inventory[key] = Inventory(files, size)

    def _gap(self, event: EventFields, now: float) -> None:
        agent = str(event.get("agent.id", ""))
        lost = event.get("exfilguard.gap.lost", 0)
        recent = [g for g in self.gaps.get(agent, []) if g[0] >= now - GAP_MEMORY_SECONDS][-99:]
        recent.append((now, int(lost) if isinstance(lost, int) else 0))
        self.gaps[agent] = recent

    def _raise_later(self, policy: Policy, firing: Firing) -> RaisedAlert:
        """`_raise` of a folded repeat's follow-up: its event kept as a view of its own copy."""
        if type(firing.event) is EventView:
            firing.event = firing.event.mapping()
        return self._raise(policy, firing)

    def _raise(self, policy: Policy, firing: Firing) -> RaisedAlert:
        event = firing.event
        measures: dict[str, Any] = dict(firing.measures)
        summary.describe(event, measures, self.inventory, policy.aggregate, zone=self.timezone,
                         after_hours=self._after_hours)
        measures.setdefault("count", firing.count)
        agent = str(event.get("agent.id", ""))
        lost = sum(n for t, n in self.gaps.get(agent, []) if t >= firing.last - GAP_MEMORY_SECONDS)
        measures["agent_lost_events_24h"] = lost
        text = summary.render(policy.summary, event, measures)
        measures.pop("count")
        alert = alert_mod.build(
            policy_id=policy.id,
            title=policy.title,
            severity=policy.severity,
            description=policy.description,
            tags=policy.tags,
            summary=text,
            set_hash=self._hash,
            event=event,
            count=firing.count,
            evidence=firing.evidence,
            measures=measures,
            first=_iso(firing.first),
            last=_iso(firing.last),
        )
        for name in _BEHAVIOUR_FIELDS:
            value = event.get(name)
            if value or (name.startswith("device.approved") and name in event and event.get("device.serial")):
                alert[name] = value
        group = self._group(policy, firing)
        return RaisedAlert(alert, group=group, suppress_seconds=policy.suppress.window, time=firing.last)

    @staticmethod
    def _group(policy: Policy, firing: Firing) -> tuple[Any, ...]:
        """Suppression key: the policy and its suppress.by values (plus the tag for coverage)."""
        event = firing.event
        group = (policy.id, *(group_value(event.get(f)) for f in policy.suppress.by))
        if policy.aggregate and policy.aggregate.coverage:
            group = (*group, firing.measures.get("tag"))
        return group

    # ---------------------------------------------------------------- state

    def expire(self, now: float | None = None) -> int:
        """Drop window groups older than their span (also done every SWEEP_EVERY events)."""
        at = self.clock if now is None else now
        return sum(c.window.expire(at) for c in self._policies if c.window is not None)

    def stats(self) -> dict[str, Any]:
        """Figures for metrics and `--json` output: groups open, evicted, events, alerts."""
        return {
            "policies": len(self._policies),
            "set_hash": self._hash,
            "events": self.events_seen,
            "alerts": self.alerts_raised,
            "open_groups": sum(len(c.window) for c in self._policies if c.window is not None),
            "evicted_groups": sum(c.window.evicted for c in self._policies if c.window is not None),
            "inventories": len(self.inventory),
            "suppressed_pending": len(self.suppressor),
            "folded_by_policy": dict(self.folded),
            **(self.behaviour.stats() if self.behaviour is not None else {}),
            "skipped_by_policy": dict(self.skipped),
            "suspended_policies": sorted(self._suspended),
        }

    def longest_window(self) -> float:
        """The longest aggregate window or sequence span: how far back a restart must replay."""
        spans = [c.window.span for c in self._policies if c.window is not None]
        return max(spans, default=0.0)


# Enriched fields an alert carries as evidence when set (collector/behaviour/): why it was new or
# unusual, how much more than usual, the user's risk.
_BEHAVIOUR_FIELDS = tuple(fields.ENRICHED)


def _iso(epoch: float) -> str | None:
    if not math.isfinite(epoch) or epoch <= 0:
        return None
    return ecs_time_at(epoch)
