"""EmailSink: one plain-text mail per alert over SMTP (stdlib smtplib, on the sink's worker thread).

The password is read from `password_file` at send time, never from the config itself.
STARTTLS verifies the server's certificate and host name (against `ca`, or the system's
trust store): an unverified upgrade would hand the login to whoever sits in the middle.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from collector.alerts.errors import SinkError
from collector.alerts.sinks.base import QueuedSink

# Fields shown at the top of the mail, in the order an officer reads them.
_LINES = (
    ("Summary", "summary"),
    ("Severity", "severity"),
    ("User's risk score", "exfilguard.risk.score"),
    ("Risk signals", "exfilguard.risk.signals"),
    ("Policy", "policy.id"),
    ("Title", "policy.title"),
    ("User", "user.name"),
    ("Login user", "exfilguard.login_user.name"),
    ("Host", "host.name"),
    ("Device serial", "device.serial"),
    ("Device", "device.model"),
    ("File", "file.path"),
    ("Source", "exfilguard.source.path"),
    ("Process", "process.command_line"),
    ("Count", "count"),
    ("First event", "event.start"),
    ("Last event", "event.end"),
    ("Alert id", "id"),
)


# A file name or command line is the endpoint user's to choose: a newline in it must not start a
# line of its own ("Severity: low") in the fact lines an officer reads first; the JSON below
# shows it exactly. C0 and C1 controls, DEL and the Unicode line and paragraph separators are
# written as escapes.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS |= {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _one_line(value: object) -> str:
    return str(value).translate(_CONTROLS)


class EmailSink(QueuedSink):
    """Mails each alert to `to` from `sender` through the SMTP server at `smtp` (host:port)."""

    name = "email"

    def __init__(
        self,
        smtp: str,
        sender: str,
        to: list[str],
        *,
        starttls: bool = False,
        username: str | None = None,
        password_file: str | None = None,
        ca: str | None = None,
        max_retries: int = 5,
        timeout: float = 10.0,
    ) -> None:
        host, sep, port = smtp.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"smtp must be host:port, got {smtp!r}")
        if not to:
            raise ValueError("an email sink needs at least one recipient")
        self.host, self.port = host.strip("[]"), int(port)
        self.sender, self.to = sender, list(to)
        self.starttls, self.username, self.password_file = starttls, username, password_file
        self.ca = ca
        self.timeout = timeout
        super().__init__(max_retries)

    def message(self, alert: dict[str, Any]) -> EmailMessage:
        """The mail for one alert: a readable summary, then the whole alert as JSON."""
        mail = EmailMessage()
        title = " ".join(str(alert.get("summary", "")).split())
        subject = (
            f"[ExfilGuard {str(alert.get('severity', '')).upper()}] {alert.get('policy.title', '')}: {title}"
        )
        mail["Subject"] = subject[:200]
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        lines = [f"{label}: {_one_line(alert[key])}" for label, key in _LINES
                 if alert.get(key) not in (None, "", [])]
        lines += ["", "Evidence event ids:", *[f"  {e}" for e in alert.get("evidence", [])], ""]
        lines += ["Alert (JSON):", json.dumps(self.document(alert), indent=2, sort_keys=True)]
        mail.set_content("\n".join(lines))
        return mail

    def deliver(self, alert: dict[str, Any]) -> None:
        """Connect, optionally STARTTLS and log in, send, quit."""
        mail = self.message(alert)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as client:
                if self.starttls:
                    client.starttls(context=ssl.create_default_context(cafile=self.ca))
                if self.username:
                    client.login(self.username, self._password())
                client.send_message(mail)
        except smtplib.SMTPResponseException as exc:
            # 5xx is permanent (bad recipient, refused): retrying will not help.
            raise SinkError(self.name, f"SMTP {exc.smtp_code}", retry=exc.smtp_code < 500) from exc
        except ssl.SSLCertVerificationError as exc:
            # Not a passing outage: retrying would keep offering the login to the wrong server.
            raise SinkError(
                self.name, f"certificate of {self.host}:{self.port} did not verify: {exc.verify_message}",
                retry=False,
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise SinkError(self.name, f"cannot send mail via {self.host}:{self.port}: {exc}") from exc

    def _password(self) -> str:
        if not self.password_file:
            return ""
        try:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SinkError(self.name, f"cannot read the password file: {exc.strerror}", retry=False) from exc
