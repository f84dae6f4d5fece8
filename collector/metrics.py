"""The collector's Prometheus metrics: one registry per collector, served on `metrics_listen`.

Two kinds of figures:
  - the ingest path increments a few instruments directly, once per batch or commit, never
    per event (`CollectorMetrics.events_ingested`, `.store_seconds`, ...);
  - everything that already keeps its own counts (fleet registry, policy engine, sinks,
    store) is read at scrape time by `sources`, on the collector's event loop, where that
    state lives, so nothing is read half-updated and nothing is counted twice.

The HTTP endpoint is prometheus_client's own threaded server: a scrape never runs on the
grpc.aio event loop, it only waits for a snapshot taken there. Labels are bounded: gRPC
codes, fixed reasons, sink types, policy ids and severities; never agent ids or hosts.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from collector import __version__
from collector.fleet.registry import FleetSummary

log = logging.getLogger("exfilguard.collector.metrics")

# A store write is an fsync'd commit of one or more batches: milliseconds, seconds when the disk stalls.
STORE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCRAPE_TIMEOUT_SECONDS = 5.0

# Why a stream was ended (the `reason` label of exfilguard_stream_rejections_total): a fixed set.
NO_HELLO = "no_hello"
BAD_HELLO = "bad_hello"
BAD_BATCH = "bad_batch"
REPEATED_HELLO = "repeated_hello"
EMPTY_MESSAGE = "empty_message"
MAX_STREAMS = "max_streams"
STORE_FAILED = "store_failed"
NO_CLIENT_CERT = "no_client_cert"
UNKNOWN_AGENT = "unknown_agent"  # the client certificate names no agent
CERT_REVOKED = "cert_revoked"
AGENT_MISMATCH = "agent_mismatch"  # hello.agent_id is not the certificate's agent
MALFORMED = "malformed"  # bytes that are not an AgentMessage
BAD_TEXT = "bad_text"  # a string holding NUL
BAD_HEARTBEAT = "bad_heartbeat"
HELLO_TIMEOUT = "hello_timeout"
PENDING_HELLOS = "pending_hellos"  # too many streams waiting for their hello (in all, or from one address)
IDLE = "idle"  # nothing received for idle_stream_seconds

Source = Callable[[], Iterable[Metric] | Awaitable[Iterable[Metric]]]


class CollectorMetrics:
    """Every metric of one collector, on a registry of its own (not prometheus_client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_ingested = Counter(
            "exfilguard_events_ingested", "Events newly stored (resent duplicates not counted)", registry=r
        )
        self.events_duplicate = Counter(
            "exfilguard_events_duplicate", "Resent events that were already stored (skipped)", registry=r
        )
        self.batches_acked = Counter("exfilguard_batches_acked", "Batches acknowledged to agents", registry=r)
        self.stream_rejections = Counter(
            "exfilguard_stream_rejections",
            "Agent streams ended by the collector, by gRPC status code and reason",
            ["code", "reason"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "exfilguard_store_ingest_seconds",
            "Time of one store write (one commit holding the batches of one or more streams)",
            buckets=STORE_SECONDS_BUCKETS,
            registry=r,
        )
        self.store_failures = Counter(
            "exfilguard_store_ingest_failures", "Batches the store failed to write (not acked)", registry=r
        )
        self.silent_reported = Counter(
            "exfilguard_agents_silent_reported",
            "agent.silent events raised (an agent stopped talking)",
            registry=r,
        )
        Info("exfilguard_collector", "The running collector", registry=r).info({"version": __version__})
        self.sources = _LoopSources(SCRAPE_TIMEOUT_SECONDS)
        r.register(self.sources)

    def stream_rejected(self, code: str, reason: str) -> None:
        """Count a stream the collector ended (`code`: gRPC status name, `reason`: one of the constants)."""
        self.stream_rejections.labels(code, reason).inc()

    def read_at_scrape(self, loop: asyncio.AbstractEventLoop, *sources: Source) -> None:
        """Add sources of metric families, called on `loop` at each scrape (sync or async)."""
        self.sources.loop = loop
        self.sources.sources.extend(sources)


class _LoopSources(Collector):
    """Runs the scrape-time sources on the collector's event loop and waits (bounded) for them."""

    def __init__(self, timeout: float) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sources: list[Source] = []
        self.timeout = timeout

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe up front (the registry must not call collect() at registration)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The sources' families; none when the loop is gone or does not answer in time."""
        loop = self.loop
        if loop is None or not self.sources:
            return []
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # waiting for the loop on the loop would never end
            log.error("metrics collected on the event loop itself; loop figures left out")
            return []
        try:
            future = asyncio.run_coroutine_threadsafe(self._gather(), loop)
        except RuntimeError:  # the loop is closed: the collector is stopping
            return []
        try:
            return future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            log.warning(
                "metrics: the event loop did not answer within %g s; loop figures left out", self.timeout
            )
        except Exception:
            log.exception("metrics: collecting loop figures failed")
        return []

    async def _gather(self) -> list[Metric]:
        out: list[Metric] = []
        for source in self.sources:
            try:
                result = source()
                if inspect.isawaitable(result):
                    result = await result
                out.extend(result)
            except Exception:  # one broken source must not cost the scrape the others
                log.exception("metrics source %r failed", source)
        return out


def fleet_families(fleet: FleetSummary, streams: int, pending: int = 0) -> list[Metric]:
    """The fleet registry's figures (in memory, this collector's view)."""
    return [
        GaugeMetricFamily("exfilguard_agents_connected", "Agents with an open stream", value=fleet.connected),
        GaugeMetricFamily("exfilguard_agents_known", "Agents in the fleet registry", value=fleet.known),
        GaugeMetricFamily(
            "exfilguard_agents_silent", "Known agents silent beyond silent_agent_seconds", value=fleet.silent
        ),
        GaugeMetricFamily(
            "exfilguard_agent_backlog_events",
            "Events waiting in connected agents' spools (sum of their last heartbeats)",
            value=fleet.backlog,
        ),
        GaugeMetricFamily("exfilguard_streams_open", "Open agent streams", value=streams),
        GaugeMetricFamily(
            "exfilguard_streams_pending", "Open streams that have not sent their hello yet", value=pending
        ),
    ]


def store_families(gaps: int, lost: int, unsealed: int | None) -> list[Metric]:
    """Figures the store keeps: gaps and losses agents reported (all time), the sealer's lag."""
    out: list[Metric] = [
        CounterMetricFamily(
            "exfilguard_agent_gaps", "agent.gap events stored (all agents, all time)", value=gaps
        ),
        CounterMetricFamily(
            "exfilguard_agent_events_lost", "Events agents reported lost in agent.gap events", value=lost
        ),
    ]
    if unsealed is not None:
        out.append(
            GaugeMetricFamily(
                "exfilguard_store_unsealed_events",
                "Stored events not yet in their agent's hash chain (sealer lag)",
                value=unsealed,
            )
        )
    return out


def _per_policy(
    name: str,
    documentation: str,
    counts: Mapping[tuple[str, ...], int],
    labels: Sequence[str] = ("policy_id",),
) -> CounterMetricFamily:
    """A counter family with one sample per label values (policy id, ...), in sorted order."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, n in sorted(counts.items()):
        family.add_metric(list(values), n)
    return family


# The policy listener's plain figures, one unlabelled sample each: (family, name, help, stats key).
_FigureFamily = Callable[..., Metric]
_EVALUATION_FIGURES: tuple[tuple[_FigureFamily, str, str, str], ...] = (
    (GaugeMetricFamily, "exfilguard_policies", "Policies in the running set", "policies"),
    (CounterMetricFamily, "exfilguard_policy_events_evaluated",
     "Events evaluated by the policy engine (with the replay at start)", "events"),
    (CounterMetricFamily, "exfilguard_policy_events_unevaluated",
     "Stored events the policy process never evaluated (it died with them queued, or was not running)",
     "unevaluated"),
    (CounterMetricFamily, "exfilguard_policy_process_restarts",
     "Times the policy process died and was started again", "restarts"),
    (GaugeMetricFamily, "exfilguard_baseline_users",
     "Users with a baseline (collector/behaviour): kept in memory and in the store", "baseline_users"),
    (GaugeMetricFamily, "exfilguard_devices_seen", "Removable devices seen by the fleet", "devices_seen"),
    (GaugeMetricFamily, "exfilguard_policy_open_groups", "Open aggregate/sequence window groups",
     "open_groups"),
    (CounterMetricFamily, "exfilguard_policy_evicted_groups", "Window groups evicted at policy_max_groups",
     "evicted_groups"),
)
_ALERT_FIGURES: tuple[tuple[_FigureFamily, str, str, str], ...] = (
    (GaugeMetricFamily, "exfilguard_alerts_suppression_open",
     "Suppression windows open (alert groups folding repeats)", "suppressed_pending"),
    (CounterMetricFamily, "exfilguard_alert_store_failures",
     "Alerts the store failed to keep (they were still sent to the sinks)", "alert_store_failures"),
    (GaugeMetricFamily, "exfilguard_policy_fleet_leading",
     "1 while this policy process evaluates for the fleet (PostgreSQL; always 0 on SQLite)", "fleet_leading"),
    (CounterMetricFamily, "exfilguard_policy_fleet_takeovers",
     "Times this collector's policy process took the fleet's evaluation over", "fleet_takeovers"),
)


def _figures(
    table: Sequence[tuple[_FigureFamily, str, str, str]], stats: Mapping[str, Any]
) -> list[Metric]:
    """One family per row of `table`, its value read from `stats` (0 when the key is absent)."""
    return [family(name, help_text, value=stats.get(key, 0)) for family, name, help_text, key in table]


def policy_families(stats: Mapping[str, Any]) -> list[Metric]:
    """The policy listener's figures (`PolicyListener.stats()`): set, reloads, evaluation, alerts, sinks."""
    info = InfoMetricFamily(
        "exfilguard_policy_set", "The running policy set", value={"hash": stats["set_hash"]}
    )
    reloads = CounterMetricFamily(
        "exfilguard_policy_reloads", "Policy set reloads, by result", labels=["result"]
    )
    reloads.add_metric(["loaded"], stats.get("reloads", 0))
    reloads.add_metric(["refused"], stats.get("reload_failures", 0))
    raised = _per_policy(
        "exfilguard_alerts_raised",
        "Alerts sent to the sinks and stored (first alerts and folded follow-ups)",
        {(policy_id, severity): n for (policy_id, severity), n in stats.get("alerts_by_policy", {}).items()},
        labels=["policy_id", "severity"],
    )
    folded = _per_policy(
        "exfilguard_alerts_folded",
        "Repeats folded into an open suppression window (reported later in one follow-up)",
        {(policy_id,): n for policy_id, n in stats.get("folded_by_policy", {}).items()},
    )
    skipped = _per_policy(
        "exfilguard_policy_evaluations_skipped",
        "Policy evaluations skipped to keep ingest moving (event budget spent or policy suspended)",
        {(policy_id,): n for policy_id, n in stats.get("skipped_by_policy", {}).items()},
    )
    deliveries = CounterMetricFamily(
        "exfilguard_alert_deliveries", "Alert deliveries by sink type and result", labels=["sink", "result"]
    )
    for sink, figures in sorted(stats.get("sinks", {}).items()):
        for result in ("sent", "failed", "dropped", "filtered"):
            deliveries.add_metric([sink, result], figures.get(result, 0))
    return [
        info,
        reloads,
        *_figures(_EVALUATION_FIGURES, stats),
        raised,
        folded,
        skipped,
        *_figures(_ALERT_FIGURES, stats),
        deliveries,
    ]


def policy_source(stats: Callable[[], Mapping[str, Any]]) -> Source:
    """A scrape-time source made of the policy listener's `stats()`."""

    def families() -> list[Metric]:
        figures = stats()
        return policy_families(figures) if figures else []  # the policy process has not reported yet

    return families


def config_reload_families(reloads: int, failures: int) -> list[Metric]:
    """Reloads of the central agent config (fleet file), by result."""
    family = CounterMetricFamily(
        "exfilguard_agent_config_reloads", "Fleet file (agent_config) reloads, by result", labels=["result"]
    )
    family.add_metric(["loaded"], reloads)
    family.add_metric(["refused"], failures)
    return [family]


class StoreFigures:
    """Reads the store's figures for a scrape, at most once per `max_age` seconds (the read is O(fleet))."""

    def __init__(
        self, read: Callable[[], Awaitable[tuple[int, int, int | None]]], max_age: float = 2.0
    ) -> None:
        self._read = read
        self._max_age = max_age
        self._cached: tuple[int, int, int | None] | None = None
        self._at = 0.0

    async def families(self) -> list[Metric]:
        """Store families from a fresh enough read (a failed read leaves them out)."""
        now = time.monotonic()
        if self._cached is None or now - self._at >= self._max_age:
            self._cached = await self._read()
            self._at = now
        return store_families(*self._cached)


class MetricsServer:
    """The HTTP endpoint (`/metrics`) on its own threads; `stop()` closes it."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, _, port = address.rpartition(":")
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(int(port), host.strip("[]"), registry=registry)
        self.port: int = self._server.server_port

    def stop(self) -> None:
        """Stop serving and close the socket (blocks up to about half a second)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
