"""SyslogSink: RFC 5424 messages with a CEF payload (what SIEMs parse), over UDP, TCP or TLS.

    <PRI>1 TIMESTAMP HOST exfilguard - ALERT [exfilguard@32473 policy="..." severity="..."] CEF:0|...

Facility is authpriv (10); the syslog severity follows the alert's (critical->crit, high->err,
medium->warning, low->notice). TCP uses RFC 6587 octet counting, TLS RFC 5425 (the same framing,
the receiver's certificate verified); UDP sends one datagram, cut at MAX_UDP_BYTES. The CEF
extension carries who, what, where to and the evidence ids. With `format: ecs` or `ocsf` the
message carries the alert document as JSON instead of CEF.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

from collector import __version__
from collector.alerts.errors import SinkError
from collector.alerts.sinks.base import QueuedSink
from collector.forward.syslog import APP, FACILITY, SD_ID, SyslogTransport, sd_value

SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 5, "low": 3}

# Alert field -> CEF extension key (standard keys first, then labelled custom strings).
_CEF_KEYS = (
    ("@timestamp", "rt"),
    ("host.name", "shost"),
    ("user.name", "suser"),
    ("user.id", "suid"),
    ("file.path", "filePath"),
    ("file.size", "fsize"),
    ("file.hash.sha256", "fileHash"),
    ("process.executable", "sproc"),
    ("process.pid", "spid"),
    ("count", "cnt"),
    ("summary", "msg"),
    ("id", "externalId"),
)
_CEF_CUSTOM = (
    ("device.serial", "deviceSerial"),
    ("exfilguard.source.path", "sourcePath"),
    ("policy.set_hash", "policySetHash"),
    ("agent.id", "agentId"),
    ("evidence", "evidence"),
    ("exfilguard.login_user.name", "loginUser"),
)


def _header(text: object) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _ext(text: object) -> str:
    if isinstance(text, list):
        text = ",".join(str(v) for v in text)
    return str(text).replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def cef(alert: dict[str, Any]) -> str:
    """The CEF:0 line of an alert."""
    severity = str(alert.get("severity", "low"))
    head = "|".join(
        _header(v)
        for v in (
            "CEF:0",
            "ExfilGuard",
            "ExfilGuard",
            __version__,
            alert.get("policy.id", ""),
            alert.get("policy.title", ""),
            CEF_SEVERITY.get(severity, 5),
        )
    )
    pairs = [f"{key}={_ext(alert[name])}" for name, key in _CEF_KEYS if alert.get(name) not in (None, "", [])]
    n = 0
    for name, label in _CEF_CUSTOM:
        if alert.get(name) in (None, "", []):
            continue
        n += 1
        pairs.append(f"cs{n}Label={label} cs{n}={_ext(alert[name])}")
    risk = alert.get("exfilguard.risk.score")
    if isinstance(risk, (int, float)):  # the user's risk score (collector/behaviour/risk.py)
        pairs.append(f"cfp1Label=riskScore cfp1={float(risk):.1f}")
    return head + "|" + " ".join(pairs)


def rfc5424(alert: dict[str, Any], hostname: str, payload: str | None = None) -> bytes:
    """The whole RFC 5424 message (no framing); `payload` replaces the CEF line (ECS/OCSF JSON)."""
    severity = str(alert.get("severity", "low"))
    pri = FACILITY * 8 + SYSLOG_SEVERITY.get(severity, 5)
    timestamp = str(alert.get("@timestamp") or "-")
    alert_id, policy = sd_value(alert.get("id", "")), sd_value(alert.get("policy.id", ""))
    sd = f'[{SD_ID} alertId="{alert_id}" policy="{policy}" severity="{sd_value(severity)}"]'
    host = (hostname or "-")[:255].replace(" ", "_")
    body = cef(alert) if payload is None else payload
    return f"<{pri}>1 {timestamp} {host} {APP} - ALERT {sd} {body}".encode()


class SyslogSink(QueuedSink):
    """Sends each alert over `wire`, a connection to a syslog receiver (UDP, TCP or TLS: RFC 5425)."""

    name = "syslog"

    def __init__(self, wire: SyslogTransport, max_retries: int = 5) -> None:
        self.wire = wire
        self.hostname = socket.gethostname()
        super().__init__(max_retries)

    def message(self, alert: dict[str, Any]) -> bytes:
        """The RFC 5424 message: CEF for format exfilguard, else the alert document as JSON."""
        if self.format == "exfilguard":
            return rfc5424(alert, self.hostname)
        return rfc5424(alert, self.hostname, json.dumps(self.document(alert), sort_keys=True))

    def deliver(self, alert: dict[str, Any]) -> None:
        """One message; a broken connection is dropped and reopened on the retry."""
        try:
            self.wire.send([self.message(alert)])
        except ssl.SSLCertVerificationError as exc:
            # Not a passing outage: the receiver is not who the config says (or the CA is wrong).
            reason = f"certificate of {self.wire.where} did not verify: {exc.verify_message}"
            raise SinkError(self.name, reason, retry=False) from exc
        except OSError as exc:
            raise SinkError(self.name, f"cannot send to {self.wire.where}: {exc}") from exc

    def close_resources(self) -> None:
        """Close the connection."""
        self.wire.close()
