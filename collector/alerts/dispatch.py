"""Dispatcher: the sinks configured in collector.yaml's `alerts`, fed one alert at a time."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from collector import config as cfg
from collector.alerts.routing import Route
from collector.alerts.secrets import read_secret, tls_context
from collector.alerts.sinks.base import QueuedSink
from collector.alerts.sinks.email import EmailSink
from collector.alerts.sinks.jsonl import JsonlSink
from collector.alerts.sinks.stdout import StdoutSink
from collector.alerts.sinks.syslog import SyslogSink
from collector.alerts.sinks.webhook import WebhookSink
from collector.alerts.templates import Template
from collector.forward.syslog import SyslogTransport

log = logging.getLogger("exfilguard.collector.alerts")


def build_sink(spec: cfg.Sink) -> QueuedSink:
    """One sink from its config entry, with its route and format."""
    sink = _sink(spec)
    sink.configure(Route(spec.min_severity, spec.policies, spec.tags), spec.format)
    sink.key = sink_key(spec)
    return sink


def sink_key(spec: cfg.Sink) -> str:
    """The sink's name in the store's alert outbox: its type and a digest of where it delivers, what
    it takes and in which format (the same across restarts and the collectors of a fleet; no URL or
    address in the clear)."""
    where = spec.model_dump_json(include={"path", "url", "address", "protocol", "smtp", "to",
                                          "min_severity", "policies", "tags", "format"})  # fmt: skip
    return f"{spec.type}:{hashlib.blake2b(where.encode(), digest_size=8).hexdigest()}"


def check_sinks(specs: Sequence[cfg.Sink]) -> None:
    """Read every secret, template and TLS file the sinks name, as building them will (SinkSetupError
    if one is missing or bad): the collector checks before it starts the policy process that builds them."""
    for spec in specs:
        if isinstance(spec, cfg.WebhookSink):
            for name, value in spec.headers.items():
                read_secret(value, f"webhook header {name}")
            key = read_secret(spec.routing_key, "PagerDuty routing key") if spec.routing_key else ""
            Template.build(spec.template, key)
            if spec.url.startswith("https://"):
                tls_context(spec.ca, "webhook")
        elif isinstance(spec, cfg.SyslogSink) and spec.protocol == "tls":
            tls_context(spec.ca, f"syslog {spec.address}", spec.cert, spec.key)


def _sink(spec: cfg.Sink) -> QueuedSink:
    if isinstance(spec, cfg.JsonlSink):
        return JsonlSink(spec.path)
    if isinstance(spec, cfg.StdoutSink):
        return StdoutSink()
    if isinstance(spec, cfg.WebhookSink):
        headers = {name: read_secret(value, f"webhook header {name}") for name, value in spec.headers.items()}
        key = read_secret(spec.routing_key, "PagerDuty routing key") if spec.routing_key else ""
        return WebhookSink(
            spec.url,
            spec.timeout_seconds,
            spec.max_retries,
            headers=headers,
            template=Template.build(spec.template, key),
            ca=spec.ca,
        )
    if isinstance(spec, cfg.SyslogSink):
        return SyslogSink(SyslogTransport.configured(spec))
    return EmailSink(
        spec.smtp,
        spec.sender,
        spec.to,
        starttls=spec.starttls,
        username=spec.username,
        password_file=spec.password_file,
        ca=spec.ca,
    )


class Dispatcher:
    """Sends each alert to every sink whose route takes it (non-blocking); `close()` drains them."""

    def __init__(self, sinks: Sequence[QueuedSink]) -> None:
        self.sinks = list(sinks)

    @classmethod
    def from_config(cls, specs: Sequence[cfg.Sink]) -> Dispatcher:
        """The sinks of collector.yaml's `alerts` list."""
        return cls([build_sink(s) for s in specs])

    def send(self, alert: dict[str, Any]) -> None:
        """Queue the alert on every sink."""
        for sink in self.sinks:
            sink.send(alert)

    def owing(self, alert: dict[str, Any]) -> list[str]:
        """The keys of the sinks whose route takes the alert: who owes it a delivery."""
        return [sink.key for sink in self.sinks if sink.route.accepts(alert)]

    def keys(self) -> list[str]:
        """Every sink's key."""
        return [sink.key for sink in self.sinks]

    def on_settled(self, settled: Callable[[QueuedSink, dict[str, Any]], None]) -> None:
        """Hear of each alert a sink has its final answer for (on the sink's worker thread)."""
        for sink in self.sinks:
            sink.settled = settled

    def resume(self, owed: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Queue deliveries still owed, each (sink key, alert), on the sinks of those keys; how many."""
        by_key = {sink.key: sink for sink in self.sinks}
        queued = 0
        for key, alert in owed:
            if (sink := by_key.get(key)) is not None:
                sink.send(alert)
                queued += 1
        return queued

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every sink delivered (or gave up on) what it was given."""
        return all(sink.flush(timeout) for sink in self.sinks)

    def close(self, timeout: float = 5.0) -> None:
        """Drain and stop every sink."""
        for sink in self.sinks:
            sink.close(timeout)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per sink type: sent, failed, dropped, filtered (summed over sinks of one type)."""
        out: dict[str, dict[str, int]] = {}
        for sink in self.sinks:
            figures = out.setdefault(sink.name, {"sent": 0, "failed": 0, "dropped": 0, "filtered": 0})
            figures["sent"] += sink.sent
            figures["failed"] += sink.failed
            figures["dropped"] += sink.dropped
            figures["filtered"] += sink.filtered
        return out
