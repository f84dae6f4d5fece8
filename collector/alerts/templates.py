"""Webhook bodies: the alert as JSON, a built-in shape (Slack, Teams, PagerDuty, Splunk HEC), or a
Jinja2 template file.

    shape = Template.build("slack")                  # or "teams", "pagerduty", "splunk-hec", a path
    body, content_type = shape.render(alert, doc)    # doc: the alert in the sink's format

A template file is rendered in Jinja2's sandbox (it cannot reach Python internals) with
`alert` (the SPEC §10 object, dotted names: `alert["policy.id"]`), `doc` (the alert in the
sink's `format`) and `severity`; `tojson` makes JSON of any value. What it renders is the body
as it is; a template whose name ends in `.json` must render valid JSON (checked at each alert).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from collector.alerts.errors import SinkError, SinkFileError
from common.files import read_limited

MAX_TEMPLATE_BYTES = 64 << 10
MAX_BODY_BYTES = 1 << 20
JSON = "application/json"

_PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
_SLACK_COLOR = {"critical": "#8b0000", "high": "#d9534f", "medium": "#f0ad4e", "low": "#5bc0de"}
# What an officer reads first, in order (label, alert field).
_FACTS = (
    ("User", "user.name"),
    ("Host", "host.name"),
    ("Device serial", "device.serial"),
    ("File", "file.path"),
    ("Source", "exfilguard.source.path"),
    ("Policy", "policy.id"),
    ("Risk score", "exfilguard.risk.score"),
    ("Count", "count"),
    ("Alert id", "id"),
)

Render = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


def _facts(alert: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(label, str(alert[key])) for label, key in _FACTS if alert.get(key) not in (None, "", [])]


def _title(alert: Mapping[str, Any]) -> str:
    severity = str(alert.get("severity", "")).upper()
    return f"[ExfilGuard {severity}] {alert.get('policy.title', '')}"


def _slack_text(text: str) -> str:
    # Slack's mrkdwn: these three are control characters (links, mentions) unless escaped.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack(alert: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: a headline and the facts, coloured by severity."""
    summary = _slack_text(str(alert.get("summary", "")))
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{_slack_text(value)}"} for label, value in _facts(alert)
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(alert)[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": summary[:3000] or " "}},
    ]
    for start in range(0, len(fields), 10):  # Slack takes at most 10 fields a section
        blocks.append({"type": "section", "fields": fields[start : start + 10]})
    return {
        "text": f"{_title(alert)}: {summary}"[:3000],
        "attachments": [
            {"color": _SLACK_COLOR.get(str(alert.get("severity")), "#999999"), "blocks": blocks}
        ],
    }


def teams(alert: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Microsoft Teams (Workflows webhook) message holding an Adaptive Card."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "size": "Large", "weight": "Bolder", "wrap": True, "text": _title(alert)},
            {"type": "TextBlock", "wrap": True, "text": str(alert.get("summary", ""))},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(alert)]},
        ],
    }
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }


def pagerduty(routing_key: str) -> Render:
    """A PagerDuty Events API v2 `trigger`; follow-ups of folded repeats share the first's dedup_key."""

    def render(alert: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
        dedup = str(alert.get("exfilguard.alert.repeat_of") or alert.get("id", ""))
        summary = f"{alert.get('policy.title', '')}: {alert.get('summary', '')}"
        payload: dict[str, Any] = {
            "summary": summary[:1024],
            "source": str(alert.get("host.name") or "exfilguard"),
            "severity": _PAGERDUTY_SEVERITY.get(str(alert.get("severity")), "warning"),
            "component": str(alert.get("device.serial") or alert.get("file.path") or "")[:255] or None,
            "group": str(alert.get("user.name") or "")[:255] or None,
            "class": str(alert.get("policy.id", "")),
            "custom_details": dict(doc),
        }
        if alert.get("@timestamp"):
            payload["timestamp"] = str(alert["@timestamp"])
        return {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup[:255],
            "payload": {k: v for k, v in payload.items() if v is not None},
        }

    return render


def splunk_hec(alert: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Splunk HTTP Event Collector event (`/services/collector/event`); the token goes in `headers`."""
    from collector.formats.ocsf import epoch_ms

    out: dict[str, Any] = {
        "source": "exfilguard",
        "sourcetype": "exfilguard:alert",
        "event": dict(doc),
    }
    millis = epoch_ms(alert.get("@timestamp"))
    if millis:
        out["time"] = millis / 1000
    if alert.get("host.name"):
        out["host"] = str(alert["host.name"])
    return out


class Template:
    """How a webhook shapes its body."""

    def __init__(
        self, render: Render | None = None, text: jinja2.Template | None = None, json_out: bool = True
    ) -> None:
        self._render, self._text, self.json_out = render, text, json_out

    @classmethod
    def build(cls, name: str | None, routing_key: str = "") -> Template:
        """The built-in `name`, or the template file at `name`; None: the alert document as JSON."""
        if name is None:
            return cls(lambda alert, doc: dict(doc))
        builtin: dict[str, Render] = {
            "slack": slack,
            "teams": teams,
            "pagerduty": pagerduty(routing_key),
            "splunk-hec": splunk_hec,
        }
        if name in builtin:
            return cls(builtin[name])
        return cls(text=_load(Path(name)), json_out=name.endswith(".json"))

    def render(self, alert: Mapping[str, Any], doc: Mapping[str, Any]) -> tuple[bytes, str]:
        """The request body and its content type; SinkError (not retried) when a template fails."""
        if self._render is not None:
            return json.dumps(self._render(alert, doc), sort_keys=True).encode(), JSON
        assert self._text is not None
        try:
            text = self._text.render(alert=dict(alert), doc=dict(doc), severity=alert.get("severity"))
        except jinja2.TemplateError as exc:
            raise SinkError("webhook", f"template failed: {exc}", retry=False) from exc
        body = text.encode()
        if len(body) > MAX_BODY_BYTES:
            reason = f"template rendered {len(body)} bytes (limit {MAX_BODY_BYTES})"
            raise SinkError("webhook", reason, retry=False)
        if self.json_out:
            try:
                json.loads(text)
            except ValueError as exc:
                raise SinkError("webhook", f"template did not render JSON: {exc}", retry=False) from exc
            return body, JSON
        return body, "text/plain; charset=utf-8"


def _load(path: Path) -> jinja2.Template:
    data = read_limited(path, MAX_TEMPLATE_BYTES, SinkFileError, too_large="template larger than 64 KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SinkFileError(path, "template is not UTF-8 text") from exc
    # autoescape off: bodies are JSON or text, not HTML; `tojson` quotes values for JSON bodies.
    environment = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)
    try:
        return environment.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise SinkFileError(path, f"line {exc.lineno}: {exc.message}") from exc
