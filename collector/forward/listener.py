"""Forwarding: one ForwardWorker per `forward:` destination, as the forward process runs them.

Wiring (collector/forward/process.py, in the child): `Forwarding.from_config(config, store)`
starts the workers; each reads stored events through a read-only store connection of its own
and keeps its cursors through the process's store connection; `wake_all()` after the collector
said events were stored; `close()` stops them (a delivery under way finishes or is given up,
its cursor saved only if it went through). With a PostgreSQL store shared by several
collectors, each destination is forwarded by one of them at a time (its worker leads
`forward:NAME`, collector/store/leadership.py); the others stand by. `metric_families` turns
the workers' figures into the collector's /metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.alerts.secrets import read_secret
from collector.config import CollectorConfig, Destination, HttpDestination
from collector.forward import destinations
from collector.forward.errors import REASONS
from collector.forward.formatted import Formatted, Formatter
from collector.forward.syslog import SyslogTransport
from collector.forward.worker import ForwardWorker
from collector.store import Store, open_store
from collector.store.cursors import CursorBook
from collector.store.leadership import Leadership


def build_destination(spec: Destination) -> destinations.Destination:
    """One destination from its config entry (secrets read now: SinkSetupError names what is missing)."""
    if isinstance(spec, HttpDestination):
        what = f"forward {spec.name} header"
        headers = {name: read_secret(value, f"{what} {name}") for name, value in spec.headers.items()}
        return destinations.HttpDestination(
            spec.type, spec.url, index=spec.index, headers=headers, ca=spec.ca, timeout=spec.timeout_seconds
        )
    wire = SyslogTransport.configured(spec, spec.timeout_seconds)
    return destinations.SyslogDestination(wire)


class Forwarding:
    """Every configured destination's worker, and the read connections they use."""

    def __init__(
        self,
        workers: Iterable[ForwardWorker],
        readers: Iterable[Store] = (),
        formatter: Formatter | None = None,
    ) -> None:
        self.workers = list(workers)
        self._readers = list(readers)
        self._formatter = formatter

    @classmethod
    def from_config(cls, config: CollectorConfig, store: Store, helpers: int = 0) -> Forwarding:
        """Build and start the workers of collector.yaml's `forward:`; `helpers`: formatting helper
        processes (formatted.py) for big batches."""
        workers, readers = [], []
        formatter: Formatter | None = None
        shared: Formatter | Formatted | None = None
        for spec in config.forward:
            reader = open_store(config.store, readonly=True)
            readers.append(reader)
            if formatter is None:  # named as the reader names it: no password
                formatter = shared = Formatter(reader.location, helpers)
                formatter.start()
                if len(config.forward) > 1:  # several destinations: each event formatted once for all
                    size = 4 * max(s.batch_size for s in config.forward)
                    shared = Formatted(formatter, {s.name: s.format for s in config.forward}, size)
            worker = ForwardWorker(
                spec.name,
                build_destination(spec),
                CursorBook(reader.domain(), store.domain()),
                spec.format,
                batch_size=spec.batch_size,
                retry_max=spec.retry_max_seconds,
                lead=Leadership(config.store, f"forward:{spec.name}"),
                formatter=shared,
                outage=store.outage,
            )
            workers.append(worker)
        forwarding = cls(workers, readers, formatter)
        forwarding.start()
        return forwarding

    def start(self) -> None:
        """Start the workers."""
        for worker in self.workers:
            worker.start()

    def wake_all(self) -> None:
        """Events were stored: every worker looks now rather than at its next poll."""
        for worker in self.workers:
            worker.wake()

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker and close their read connections (idempotent)."""
        for worker in self.workers:
            worker.stop(timeout)
        for reader in self._readers:
            reader.close()
        self._readers = []
        if self._formatter is not None:
            self._formatter.close()

    def figures(self) -> dict[str, dict[str, Any]]:
        """Every destination's figures (ForwardWorker.figures), by name."""
        return {worker.name: worker.figures() for worker in self.workers}


def metric_families(figures_by_name: dict[str, dict[str, Any]]) -> list[Metric]:
    """Prometheus figures of every destination, from their ForwardWorker.figures()."""
    delivered = CounterMetricFamily(
        "exfilguard_forward_events",
        "Events a forwarding destination took (again when resent)",
        labels=["destination"],
    )
    failures = CounterMetricFamily(
        "exfilguard_forward_failures",
        "Failed deliveries of a batch, by reason (each retried)",
        labels=["destination", "reason"],
    )
    lag = GaugeMetricFamily(
        "exfilguard_forward_lag_events", "Stored events not forwarded yet", labels=["destination"]
    )
    age = GaugeMetricFamily(
        "exfilguard_forward_lag_seconds",
        "Age (event time) of the oldest event not forwarded yet",
        labels=["destination"],
    )
    leading = GaugeMetricFamily(
        "exfilguard_forward_leading",
        "1 while this collector forwards the destination (0: another collector of the store does)",
        labels=["destination"],
    )
    for name, figures in figures_by_name.items():
        leading.add_metric([name], 1.0 if figures["leading"] else 0.0)
        delivered.add_metric([name], figures["delivered"])
        for reason in REASONS:
            failures.add_metric([name, reason], figures["failures"][reason])
        lag.add_metric([name], figures["lag_events"])
        age.add_metric([name], figures["lag_seconds"])
    return [delivered, failures, lag, age, leading]
