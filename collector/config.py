"""collector.yaml: listen address, TLS, store, policies and alert sinks, validated with locations.

Relative paths are taken relative to the config file.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

import pydantic
from pydantic import Field

from common import yamlfile

DEFAULT_PATH = "/etc/exfilguard/collector.yaml"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


HostPort = Annotated[str, pydantic.AfterValidator(_host_port)]  # a listen address


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class CollectorTls(_Strict):
    """Server TLS; plaintext only on loopback, and only when asked for."""

    insecure_loopback: bool = False
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    # The CA's revocation list (`exfilguard certs revoke` writes it; re-read when it changes).
    # Unset: no revocation checks.
    crl: str | None = None

    @pydantic.model_validator(mode="after")
    def _one_mode(self) -> Self:
        if not self.insecure_loopback and not (self.cert and self.key and self.client_ca):
            raise ValueError("set either insecure_loopback: true or all of cert, key and client_ca")
        return self


class Enrollment(_Strict):
    """The enrollment port (server-only TLS): agents trade a one-time token + CSR for a certificate."""

    listen: HostPort = "0.0.0.0:50052"
    pki_dir: str = "/var/lib/exfilguard/pki"  # the `exfilguard certs --dir` directory (CA key, tokens)
    cert_days: Annotated[int, Field(ge=1, le=3650)] = 365


SEVERITIES = ("low", "medium", "high", "critical")
Severity = Literal["low", "medium", "high", "critical"]
Format = Literal["exfilguard", "ecs", "ocsf"]
_NAME = r"^[A-Za-z0-9_.*?\[\]!-]{1,200}$"  # a policy id, tag or glob of them (fnmatch)


class _Routed(_Strict):
    """What every alert sink shares: which alerts it takes (collector/alerts/routing.py), in which format.

    `min_severity`: only alerts at or above it. `policies`: only alerts of these policy ids
    (fnmatch globs, e.g. `usb-*`). `tags`: only alerts whose policy carries one of these tags
    (globs too). Unset keys do not filter; set keys must all match.
    """

    min_severity: Severity | None = None
    policies: Annotated[list[Annotated[str, Field(pattern=_NAME)]], Field(max_length=1000)] = []
    tags: Annotated[list[Annotated[str, Field(pattern=_NAME)]], Field(max_length=1000)] = []
    format: Format = "exfilguard"


class JsonlSink(_Routed):
    """Alerts appended to a JSON Lines file."""

    type: Literal["jsonl"]
    path: str


class StdoutSink(_Routed):
    """Alerts printed one JSON object a line."""

    type: Literal["stdout"]


class SecretRef(_Strict):
    """A secret header value read at start from a file or an environment variable, never from the config."""

    file: str | None = None
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    prefix: Annotated[str, Field(max_length=64)] = ""  # e.g. "Splunk " or "Bearer "

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret header takes exactly one of file or env")
        return self


_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"  # an RFC 9110 token
_HEADER_TEXT = r"^[\x20-\x7e\t]{0,4096}$"  # no CR/LF: a header value cannot smuggle another header


def _plain_header(value: object) -> object:
    return {"value": value} if isinstance(value, str) else value


class HeaderValue(_Strict):
    """A webhook header: a plain `value` (written as just the text), or a secret from `file` or `env`."""

    value: Annotated[str, Field(pattern=_HEADER_TEXT)] | None = None
    file: str | None = None
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    prefix: Annotated[str, Field(pattern=_HEADER_TEXT, max_length=64)] = ""

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> Self:
        if sum(x is not None for x in (self.value, self.file, self.env)) != 1:
            raise ValueError("a header is a text, or exactly one of file or env")
        return self


# Extra request headers: a plain value (not secret), or {file: ...} / {env: ...} for secrets.
Headers = Annotated[
    dict[
        Annotated[str, Field(pattern=_HEADER_NAME)],
        Annotated[HeaderValue, pydantic.BeforeValidator(_plain_header)],
    ],
    Field(max_length=50),
]


def _no_credentials_in_the_clear(headers: dict[str, HeaderValue]) -> None:
    for name, value in headers.items():
        if value.value is not None and _SECRET_HEADER.search(name):
            # Configs end up in tickets and backups: a credential belongs in a file or the environment.
            raise ValueError(
                f"header {name} looks like a credential: give it as {{file: ...}} or {{env: ...}}"
            )


_SECRET_HEADER = re.compile(r"authorization|token|key|secret|password|cookie", re.IGNORECASE)
TEMPLATES = ("slack", "teams", "pagerduty", "splunk-hec")


class WebhookSink(_Routed):
    """Alerts POSTed as JSON (or shaped by `template`), retried with backoff."""

    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0
    max_retries: Annotated[int, Field(ge=0, le=100)] = 8
    headers: Headers = {}
    # slack, teams, pagerduty, splunk-hec (built in), or the path of a Jinja2 template file.
    template: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    # pagerduty: the Events API v2 routing key, read from a file or the environment.
    routing_key: SecretRef | None = None
    ca: str | None = None  # CA bundle for an https URL (default: the system's trust store)

    @pydantic.model_validator(mode="after")
    def _pagerduty_key(self) -> Self:
        _no_credentials_in_the_clear(self.headers)
        if self.template == "pagerduty" and self.routing_key is None:
            raise ValueError("template: pagerduty needs routing_key: {file: ...} or {env: ...}")
        if self.routing_key is not None and self.template != "pagerduty":
            raise ValueError("routing_key is only for template: pagerduty")
        return self


class SyslogSink(_Routed):
    """Alerts as RFC 5424 syslog with a CEF payload; over UDP, TCP or TLS (RFC 5425)."""

    type: Literal["syslog"]
    address: HostPort
    protocol: Literal["udp", "tcp", "tls"] = Field(
        "udp", validation_alias=pydantic.AliasChoices("protocol", "transport")
    )
    # TLS: the CA bundle the receiver's certificate must chain to (default: the system's), the
    # name it must carry (default: the address's host), and an optional client certificate.
    ca: str | None = None
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None

    @pydantic.model_validator(mode="after")
    def _tls_only(self) -> Self:
        if self.protocol != "tls" and any((self.ca, self.server_name, self.cert, self.key)):
            raise ValueError("ca, server_name, cert and key are for transport: tls")
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


class _Destination(_Strict):
    """What every forwarding destination shares (collector/forward/)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]  # keys its cursor in the store
    format: Literal["ecs", "ocsf"] = "ecs"
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Failed deliveries are retried for ever (the cursor waits), with backoff doubling up to this.
    retry_max_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 30.0


class HttpDestination(_Destination):
    """Events POSTed to Elasticsearch or OpenSearch (`_bulk`) or Splunk's HTTP Event Collector."""

    type: Literal["elasticsearch", "opensearch", "splunk-hec"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s?#]+$")]  # the base URL (no path for _bulk)
    index: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.+-]{0,254}$")] = "exfilguard-events"
    headers: Headers = {}
    ca: str | None = None  # CA bundle for an https URL (default: the system's trust store)

    @pydantic.model_validator(mode="after")
    def _headers(self) -> Self:
        _no_credentials_in_the_clear(self.headers)
        return self


class SyslogDestination(_Destination):
    """Events as RFC 5424 syslog messages (the document as JSON) over TLS (RFC 5425) or TCP."""

    type: Literal["syslog"]
    address: HostPort
    protocol: Literal["tcp", "tls"] = Field(
        "tls", validation_alias=pydantic.AliasChoices("protocol", "transport")
    )
    ca: str | None = None
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None


Destination = Annotated[HttpDestination | SyslogDestination, Field(discriminator="type")]


class EmailSink(_Routed):
    """Alerts mailed over SMTP."""

    type: Literal["email"]
    smtp: str  # host:port
    sender: str
    to: list[str]
    starttls: bool = False
    username: str | None = None
    password_file: str | None = None  # never the password itself: configs end up in tickets
    ca: str | None = None  # CA bundle for the server's STARTTLS certificate; default: system's

    @pydantic.model_validator(mode="after")
    def _no_plaintext_login(self) -> Self:
        host = self.smtp.rpartition(":")[0].strip("[]")
        if self.username and not self.starttls and host not in {"127.0.0.1", "localhost", "::1"}:
            # smtplib would send the password in the clear to a relay across the network.
            raise ValueError("username without starttls: true would send the password in the clear")
        return self


class ConsoleTls(_Strict):
    """The console's HTTPS certificate and key (PEM files)."""

    cert: str
    key: str


class Console(_Strict):
    """The officer's and auditor's web console (collector/console/); off when the key is absent."""

    listen: HostPort = "127.0.0.1:8443"
    # Plain HTTP only on a loopback address: the console carries passwords and session cookies.
    tls: ConsoleTls | None = None
    # The address officers open, for `exfilguard console link` (default: from listen and tls).
    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+/?$")] | None = None

    @pydantic.model_validator(mode="after")
    def _tls_off_loopback(self) -> Self:
        host = self.listen.rpartition(":")[0].strip("[]")
        if self.tls is None and host not in LOOPBACK_HOSTS:
            raise ValueError(f"the console needs tls (cert, key) when it listens on {host}, not loopback")
        return self

    def base_url(self) -> str:
        """Where the console is reached, without a trailing slash."""
        if self.url:
            return self.url.rstrip("/")
        host, _, port = self.listen.rpartition(":")
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


SecretT = TypeVar("SecretT", SecretRef, HeaderValue)

Sink = Annotated[
    JsonlSink | StdoutSink | WebhookSink | SyslogSink | EmailSink, Field(discriminator="type")
]


class CollectorConfig(_Strict):
    """The whole collector.yaml."""

    listen: HostPort = "127.0.0.1:50051"
    tls: CollectorTls = CollectorTls(insecure_loopback=True)
    store: str = "/var/lib/exfilguard/collector.db"
    state_dir: str = "/var/lib/exfilguard"
    policies: list[str] = ["/etc/exfilguard/policies"]
    timezone: str = "UTC"
    alerts: list[Sink] = [StdoutSink(type="stdout")]
    # Every stored event streamed to SIEM destinations (collector/forward/), each with its cursor.
    forward: Annotated[list[Destination], Field(max_length=20)] = []
    silent_agent_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    # This collector's name in a fleet (shown by `exfilguard agents`); default: host name and port.
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")] | None = None
    max_message_bytes: Annotated[int, Field(ge=64 << 10, le=64 << 20)] = 4 << 20
    max_streams: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    # Streams from one address (0: no cap; agents behind one NAT address share it).
    max_streams_per_peer: Annotated[int, Field(ge=0, le=100_000)] = 0
    # A stream must send its hello within this long; until then it holds a pending slot, not
    # one of max_streams, and there are at most max_pending_hellos of those (per address: ..._per_peer).
    hello_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_pending_hellos: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    max_pending_hellos_per_peer: Annotated[int, Field(ge=1, le=100_000)] = 64
    # A stream that sends nothing (not even a heartbeat) for this long is closed (0: never).
    # Keep it well above the agents' heartbeat_seconds.
    idle_stream_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = 900.0
    # At start, an integrity check of a SQLite store reads it for at most this long (0: skip).
    store_check_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # Prometheus metrics (collector/metrics.py). Plaintext HTTP: loopback only unless allowed here.
    # Declared before metrics_listen, whose validator reads it.
    metrics_allow_remote: bool = False
    metrics_listen: str | None = None
    log_level: str = "info"
    # Enrollment port (issue 6); absent: agents need certificates issued with `exfilguard certs agent`.
    enrollment: Enrollment | None = None
    # Policy engine and alerts (issue 4):
    # repeats of an alert for the same group within this window fold into one follow-up with a count
    alert_suppression_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = 600.0
    # how often policy files are checked for changes (0: reload on SIGHUP only)
    policy_reload_seconds: Annotated[float, Field(ge=0, le=3600)] = 2.0
    # open window groups per policy; beyond it the least recently updated group is evicted
    policy_max_groups: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    # policy evaluation time one event may take; past it the event's remaining policies are
    # skipped, and a policy that alone took longer is suspended for 5 minutes (both counted)
    policy_event_budget_ms: Annotated[float, Field(ge=1, le=60_000)] = 250.0
    # at start, replay stored events of this many past hours to rebuild open windows (0: none)
    policy_rebuild_hours: Annotated[float, Field(ge=0, le=24 * 90)] = 24.0
    # Peer groups for baselines (collector/behaviour/): group name -> user names. A user's removable
    # writes are compared with their group's; unlisted users are in "all". Also what
    # `exfilguard devices approve --group` names.
    peer_groups: dict[str, list[str]] = {}
    # Central agent config (issue 6): the fleet file (collector/fleet/config.py) with defaults,
    # groups and hosts of pushable agent.yaml keys; unset: the collector pushes nothing.
    agent_config: str | None = None
    # how often the fleet file is checked for changes (0: reload on SIGHUP only)
    agent_config_reload_seconds: Annotated[float, Field(ge=0, le=3600)] = 2.0
    # The web console (issue 15); absent: no console is served.
    console: Console | None = None

    @pydantic.field_validator("metrics_listen")
    @classmethod
    def _metrics_address(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        host = host.strip("[]")
        if host not in LOOPBACK_HOSTS and not info.data.get("metrics_allow_remote"):
            # Metrics are unauthenticated plaintext: exposing them is the admin's explicit choice.
            raise ValueError(
                f"metrics are plaintext HTTP, served only on a loopback address unless "
                f"metrics_allow_remote: true; not on {host}"
            )
        return value

    @pydantic.field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @pydantic.field_validator("forward")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"forward destination names must be unique: {', '.join(twice)} given twice")
        return value

    @pydantic.model_validator(mode="after")
    def _plaintext_on_loopback(self) -> Self:
        host = self.listen.rpartition(":")[0].strip("[]")
        if self.tls.insecure_loopback and host not in LOOPBACK_HOSTS:
            raise ValueError(f"insecure_loopback is allowed only on a loopback address, not {host}")
        if self.enrollment is not None and not (self.tls.cert and self.tls.key):
            # Agents must verify the collector before they hand over a token.
            raise ValueError("enrollment needs tls.cert and tls.key (the enrollment port is TLS only)")
        return self


def load(path: str | os.PathLike[str]) -> CollectorConfig:
    """Load and validate collector.yaml; raises yamlfile.YamlError naming file, line and key."""
    doc = yamlfile.load(path)
    config = yamlfile.validate(doc, CollectorConfig)
    base = Path(path).resolve().parent

    def rel(p: str) -> str:
        return p if "://" in p else str(base / p)

    def secret(ref: SecretT) -> SecretT:
        return ref.model_copy(update={"file": rel(ref.file)}) if ref.file else ref

    def sink_paths(sink: Sink) -> Sink:
        if isinstance(sink, JsonlSink):
            return sink.model_copy(update={"path": rel(sink.path)})
        if isinstance(sink, EmailSink):
            files = {k: rel(v) for k in ("password_file", "ca") if (v := getattr(sink, k))}
            return sink.model_copy(update=files)
        if isinstance(sink, SyslogSink):
            files = {k: rel(v) for k in ("ca", "cert", "key") if (v := getattr(sink, k))}
            return sink.model_copy(update=files)
        if isinstance(sink, WebhookSink):
            headers = {k: secret(v) for k, v in sink.headers.items()}
            update: dict[str, object] = {"headers": headers}
            if sink.template is not None and sink.template not in TEMPLATES:
                update["template"] = rel(sink.template)
            if sink.routing_key is not None:
                update["routing_key"] = secret(sink.routing_key)
            if sink.ca is not None:
                update["ca"] = rel(sink.ca)
            return sink.model_copy(update=update)
        return sink

    def destination_paths(destination: Destination) -> Destination:
        files: dict[str, object] = {
            k: rel(v) for k in ("ca", "cert", "key") if (v := getattr(destination, k, None))
        }
        if isinstance(destination, HttpDestination):
            files["headers"] = {k: secret(v) for k, v in destination.headers.items()}
        return destination.model_copy(update=files)

    sinks = [sink_paths(s) for s in config.alerts]
    tls_files = {k: rel(v) for k in ("cert", "key", "client_ca", "crl") if (v := getattr(config.tls, k))}
    console = config.console
    if console is not None and console.tls is not None:
        tls = console.tls.model_copy(update={"cert": rel(console.tls.cert), "key": rel(console.tls.key)})
        console = console.model_copy(update={"tls": tls})
    enrollment = config.enrollment
    if enrollment is not None:
        enrollment = enrollment.model_copy(update={"pki_dir": rel(enrollment.pki_dir)})
    return config.model_copy(
        update={
            "tls": config.tls.model_copy(update=tls_files),
            "enrollment": enrollment,
            "console": console,
            "store": rel(config.store),
            "state_dir": rel(config.state_dir),
            "policies": [rel(p) for p in config.policies],
            "agent_config": rel(config.agent_config) if config.agent_config else None,
            "alerts": sinks,
            "forward": [destination_paths(d) for d in config.forward],
        }
    )


def default_path() -> str:
    """Admin commands read $EXFILGUARD_CONFIG, else the installed default."""
    return os.environ.get("EXFILGUARD_CONFIG", DEFAULT_PATH)
