"""SyslogSink: RFC 5424 messages with a CEF payload (what SIEMs parse), over UDP or TCP.

    <PRI>1 TIMESTAMP HOST exfilguard - ALERT [exfilguard@32473 policy="..." severity="..."] CEF:0|...

Facility is authpriv (10); the syslog severity follows the alert's (critical->crit, high->err,
medium->warning, low->notice). TCP uses RFC 6587 octet counting; UDP sends one datagram,
cut at MAX_UDP_BYTES. The CEF extension carries who, what, where to and the evidence ids.
"""

from __future__ import annotations

import socket
from typing import Any

from collector import __version__
from collector.alerts.errors import SinkError
from collector.alerts.sinks.base import QueuedSink

FACILITY = 10  # authpriv: security messages
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 5, "low": 3}
MAX_UDP_BYTES = 8192
APP = "exfilguard"
# Private enterprise number placeholder for the structured data id (RFC 5424 §7.2.2 needs one).
SD_ID = "exfilguard@32473"

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


def _sd_value(text: object) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


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


def rfc5424(alert: dict[str, Any], hostname: str) -> bytes:
    """The whole RFC 5424 message (no framing)."""
    severity = str(alert.get("severity", "low"))
    pri = FACILITY * 8 + SYSLOG_SEVERITY.get(severity, 5)
    timestamp = str(alert.get("@timestamp") or "-")
    alert_id, policy = _sd_value(alert.get("id", "")), _sd_value(alert.get("policy.id", ""))
    sd = f'[{SD_ID} alertId="{alert_id}" policy="{policy}" severity="{_sd_value(severity)}"]'
    host = (hostname or "-")[:255].replace(" ", "_")
    return f"<{pri}>1 {timestamp} {host} {APP} - ALERT {sd} {cef(alert)}".encode()


class SyslogSink(QueuedSink):
    """Sends each alert to a syslog receiver at `host:port` over UDP or TCP."""

    name = "syslog"

    def __init__(
        self, address: str, protocol: str = "udp", max_retries: int = 5, timeout: float = 5.0
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"syslog address must be host:port, got {address!r}")
        if protocol not in ("udp", "tcp"):
            raise ValueError(f"syslog protocol is udp or tcp, got {protocol!r}")
        self.host = host.strip("[]")
        self.port = int(port)
        self.protocol = protocol
        self.timeout = timeout
        self.hostname = socket.gethostname()
        self._sock: socket.socket | None = None
        super().__init__(max_retries)

    def deliver(self, alert: dict[str, Any]) -> None:
        """One message; a broken TCP connection is dropped and reopened on the retry."""
        message = rfc5424(alert, self.hostname)
        try:
            if self.protocol == "udp":
                self._udp(message[:MAX_UDP_BYTES])
            else:
                self._tcp(b"%d %s" % (len(message), message))
        except OSError as exc:
            self.close_resources()
            raise SinkError(
                self.name, f"cannot send to {self.host}:{self.port}/{self.protocol}: {exc}"
            ) from exc

    def _udp(self, message: bytes) -> None:
        if self._sock is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family[0], socket.SOCK_DGRAM)
            self._sock.connect(family[4])
        self._sock.send(message)

    def _tcp(self, frame: bytes) -> None:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock.sendall(frame)

    def close_resources(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
