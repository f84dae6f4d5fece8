"""PolicyListener: the collector seam — evaluate stored events, store the alerts, send them to sinks.

Wiring (collector/main.py):

    def build_listeners(config, store):
        return [PolicyListener.from_config(config, store)]   # called with the event loop running

`from_config` loads the policy set strictly (a broken set raises PolicySetError: the collector
must not start blind), replays the last `policy_rebuild_hours` of stored events to rebuild open
windows (no alerts re-raised), and starts one background task: suppression follow-ups, mtime
polling for hot reload, and SIGHUP. When the loop cancels that task at shutdown, the sinks are
drained and pending alert writes finish before the store closes.

Delivery is durable (collector/store/outbox.py): an alert is stored together with the sinks that
owe it a delivery and only then queued on them; each settled delivery is forgotten at the next
tick; `resume()` queues what a dead predecessor still owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from collector.alerts.alert import RaisedAlert
from collector.alerts.dispatch import Dispatcher
from collector.alerts.sinks.base import QueuedSink
from collector.behaviour.enrich import Behaviour
from collector.behaviour.keeper import BehaviourKeeper, peer_groups
from collector.config import CollectorConfig
from collector.policy import loader
from collector.policy.engine import PolicyEngine
from collector.policy.reload import PolicyReloader
from collector.policy.windows import Limits
from collector.store.base import EventFilter, Store, StoreError

log = logging.getLogger("exfilguard.collector.policy")

TICK_SECONDS = 1.0  # suppression follow-ups go out within about this long of their window closing


class PolicyListener:
    """Evaluates events as they are stored; alerts go to the store and to every sink."""

    def __init__(
        self,
        engine: PolicyEngine,
        dispatcher: Dispatcher,
        store: Store | None = None,
        reloader: PolicyReloader | None = None,
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.store = store
        self.reloader = reloader
        self.alerts_sent = 0
        self.alerts_by_policy: dict[tuple[str, str], int] = {}  # (policy id, severity) -> sent
        self.alert_store_failures = 0
        # Alert writes run on their own thread so a slow store never stalls the event loop.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alert-store")
        self._pending: set[Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._reload_requested = False
        self.keeper: BehaviourKeeper | None = None  # approvals and baselines <-> the store
        # False when the fleet evaluator sends suppression follow-ups (collector/policy/fleet.py).
        self.follow_ups = True
        self._settled: list[tuple[str, str]] = []  # (sink key, alert id) delivered or given up
        self._settled_lock = threading.Lock()
        if store is not None:
            dispatcher.on_settled(self._on_settled)

    @classmethod
    def from_config(cls, config: CollectorConfig, store: Store | None) -> PolicyListener:
        """Load policies (strict), rebuild windows from the store, build the sinks, start the tick task."""
        policy_set = loader.load(config.policies)
        engine = PolicyEngine(
            policy_set,
            timezone=config.timezone,
            limits=Limits(max_groups=config.policy_max_groups),
            suppression_seconds=config.alert_suppression_seconds,
            budget_seconds=config.policy_event_budget_ms / 1000,
            behaviour=Behaviour(config.timezone, peer_groups(config.peer_groups)),
        )
        log.info(
            "policy set loaded: %d policies", len(policy_set.policies), extra={"set_hash": engine.set_hash}
        )
        keeps = None
        if store is not None and engine.behaviour is not None:
            keeps = BehaviourKeeper(engine.behaviour, store)
            keeps.load()
        if store is not None and config.policy_rebuild_hours > 0:
            rebuild(engine, store, config.policy_rebuild_hours)
        listener = cls(
            engine,
            Dispatcher.from_config(config.alerts),
            store,
            PolicyReloader(config.policies, engine, config.policy_reload_seconds),
        )
        listener.keeper = keeps
        listener.start()
        return listener

    # ------------------------------------------------------------------ the seam

    async def on_events(self, mappings: list[dict[str, Any]]) -> None:
        """Evaluate each stored event; raise what fires. Never blocks on sinks or the store."""
        alerts: list[RaisedAlert] = []
        for mapping in mappings:
            try:
                alerts.extend(self.engine.evaluate(mapping))
            except Exception:  # one odd event must not cost the rest of the batch its evaluation
                log.exception("policy evaluation failed on event %s", mapping.get("event.id"))
        self.raise_alerts(alerts)

    def raise_alerts(self, alerts: list[RaisedAlert], *, stored: bool = False) -> None:
        """Store (on the alert-store thread, unless already `stored` with what the sinks owe it), then
        queue on every sink."""
        for raised in alerts:
            alert = raised.to_json()
            if self.store is not None and not stored:
                future = self._writer.submit(self._store, alert)
                self._pending.add(future)
                future.add_done_callback(self._pending.discard)
            else:
                self.dispatcher.send(alert)
            self.alerts_sent += 1
            key = (raised.policy_id, raised.severity)
            self.alerts_by_policy[key] = self.alerts_by_policy.get(key, 0) + 1
            log.info(
                "alert %s: %s",
                raised.policy_id,
                alert.get("summary", ""),
                extra={"alert_id": raised.id, "policy_id": raised.policy_id, "severity": raised.severity},
            )

    def stats(self) -> dict[str, Any]:
        """Figures for metrics: the engine's (events, alerts, open groups...) and each sink's."""
        reloader = self.reloader
        return {
            **self.engine.stats(),
            "sinks": self.dispatcher.stats(),
            "alerts_sent": self.alerts_sent,
            "alerts_by_policy": dict(self.alerts_by_policy),
            "alert_store_failures": self.alert_store_failures,
            "reloads": reloader.reloads if reloader is not None else 0,
            "reload_failures": reloader.failures if reloader is not None else 0,
        }

    def _store(self, alert: dict[str, Any]) -> None:
        assert self.store is not None
        try:
            self.store.add_alert(alert, self.dispatcher.owing(alert))
        except StoreError:
            self.alert_store_failures += 1
            log.exception("could not store alert %s (it was still sent to the sinks)", alert.get("id"))
        self.dispatcher.send(alert)  # after the commit: the outbox holds it should this process die

    def resume(self, *, strict: bool = False) -> int:
        """Queue the deliveries the store says these sinks still owe (a predecessor died or stopped
        before they were settled); how many. Call before new alerts are raised. `strict`: a store
        that cannot say raises StoreError (a fleet take-over fails and is tried again) instead of
        leaving them for the next start."""
        if self.store is None:
            return 0
        try:
            owed = self.store.owed(self.dispatcher.keys())
        except StoreError as exc:
            if strict:
                raise
            log.error("cannot read the alert deliveries still owed (%s); they wait for the next start", exc)
            return 0
        queued = self.dispatcher.resume([(key, dict(alert)) for key, alert in owed])
        if queued:
            log.warning("%d alert deliveries a previous run did not finish are sent again", queued,
                        extra={"deliveries": queued})  # fmt: skip
        return queued

    def _on_settled(self, sink: QueuedSink, alert: dict[str, Any]) -> None:
        with self._settled_lock:
            first = not self._settled
            self._settled.append((sink.key, str(alert.get("id", ""))))
        if first:  # forgotten at once, not at the next tick: a crash meanwhile would send it again
            with contextlib.suppress(RuntimeError):  # the writer is already shut down
                self._writer.submit(self._settle)

    def _settle(self) -> None:
        # Forget settled deliveries in the outbox; kept for the next try while the store fails.
        with self._settled_lock:
            done, self._settled = self._settled, []
        if not done or self.store is None:
            return
        try:
            self.store.settle(done)
        except StoreError as exc:
            self.store.outage.failed(exc, "settling alert deliveries")
            with self._settled_lock:
                self._settled[:0] = done
        else:
            self.store.outage.succeeded()

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Start the tick task and the SIGHUP handler on the running loop (no-op without one)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._task = loop.create_task(self._tick_forever(), name="policy-tick")

    def request_reload(self) -> None:
        """Reload the policy files at the next tick (the SIGHUP handler)."""
        self._reload_requested = True

    def tick(self, now: float | None = None) -> None:
        """One round: follow-ups of closed suppression windows, SIGHUP or changed-file reloads."""
        if self.follow_ups:
            self.raise_alerts(self.engine.flush(max(self.engine.clock, now or time.time())))
        self._sync_behaviour()
        if self._settled:
            with contextlib.suppress(RuntimeError):  # the writer is already shut down
                self._writer.submit(self._settle)
        if self.reloader is None:
            return
        if self._reload_requested:
            self._reload_requested = False
            self.reloader.snapshot = self.reloader.scan()
            self.reloader.reload()
        elif self.reloader.poll_seconds > 0:
            self.reloader.check()

    async def _tick_forever(self) -> None:
        poll = self.reloader.poll_seconds if self.reloader is not None else 0.0
        interval = min(TICK_SECONDS, poll) if poll > 0 else TICK_SECONDS
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    self.tick()
                except Exception:
                    log.exception("policy tick failed")
        finally:
            # Folded repeats would be lost with the process: send their follow-ups now.
            try:
                if self.follow_ups:
                    self.raise_alerts(self.engine.flush(math.inf))
            finally:
                self.close()

    def _sync_behaviour(self, *, final: bool = False) -> None:
        # On the alert-store thread, like alert writes: a slow store never stalls the loop.
        work = self.keeper.due(final=final) if self.keeper is not None else None
        if work is not None:
            with contextlib.suppress(RuntimeError):  # the writer is already shut down
                self._writer.submit(work)

    def close(self, timeout: float = 5.0) -> None:
        """Save baselines, finish pending alert writes and drain the sinks (idempotent)."""
        self._sync_behaviour(final=True)
        self._writer.shutdown(wait=True)
        self.dispatcher.close(timeout)
        self._settle()  # what was not delivered stays owed: the next run sends it

    async def aclose(self) -> None:
        """Stop the tick task (which closes everything)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        else:
            self.close()


def rebuild(engine: PolicyEngine, store: Store, hours: float) -> int:
    """Replay stored events of the last `hours` (at most the longest window) into the engine, no alerts."""
    span = min(hours * 3600.0, engine.longest_window())
    if span <= 0:
        return 0
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=span)
    started = time.monotonic()
    try:
        n = engine.warm(store.events(EventFilter(since=since)))
    except StoreError:
        log.exception("could not rebuild policy windows from the store; starting with empty windows")
        return 0
    log.info(
        "policy windows rebuilt from %d stored events in %.1fs",
        n,
        time.monotonic() - started,
        extra={"events": n, "span_seconds": span},
    )
    return n
