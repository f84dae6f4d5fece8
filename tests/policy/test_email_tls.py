"""The e-mail sink against a real SMTP server (aiosmtpd) that demands STARTTLS and a login:
the mail goes through a verified TLS upgrade, a server whose certificate is not from the
configured CA never sees the login, and a config that would log in over plaintext is refused."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from collector import config as cfg
from collector.alerts.dispatch import Dispatcher
from collector.alerts.errors import SinkError
from collector.alerts.sinks.email import EmailSink
from collector.tls import pki
from common.yamlfile import YamlError
from tests.helpers import free_port
from tests.policy.test_sinks import alert

USER, PASSWORD = "soc-bot", "correct horse battery staple"


@dataclass
class Mailbox:
    """What the server accepted, and every login it was offered."""

    mails: list[tuple[str, list[str], bytes, bool]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.mails.append((str(envelope.mail_from), list(envelope.rcpt_tos), content, bool(session.ssl)))
        return "250 queued"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False)
        self.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=(data.login.decode(), data.password.decode()) == (USER, PASSWORD))


@dataclass
class Relay:
    """A STARTTLS-only relay on loopback with a certificate from its own CA."""

    address: str
    ca_path: Path
    mailbox: Mailbox


def _relay(directory: Path, mailbox: Mailbox) -> tuple[Controller, Relay]:
    authority = pki.CertificateAuthority(directory)
    authority.init_ca("Mail test CA")
    server = authority.issue_server("127.0.0.1", ["localhost"])
    assert server.cert_path is not None and server.key_path is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert_path, server.key_path)
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
        authenticator=mailbox.authenticate, auth_required=True, auth_require_tls=True,
    )
    controller.start()
    return controller, Relay(f"127.0.0.1:{port}", authority.ca_cert_path, mailbox)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    controller, relay = _relay(tmp_path / "mail-pki", Mailbox())
    yield relay
    controller.stop()


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def test_mail_goes_through_verified_starttls_with_a_login(relay: Relay, tmp_path: Path) -> None:
    sink = EmailSink(relay.address, "exfilguard@example.com", ["soc@example.com"], starttls=True,
                     username=USER, password_file=str(_password_file(tmp_path)), ca=str(relay.ca_path))
    try:
        sink.deliver(alert())  # synchronously: any failure raises here
    finally:
        sink.close()
    assert relay.mailbox.logins == [(USER, PASSWORD)]
    [(sender, rcpts, raw, over_tls)] = relay.mailbox.mails
    assert (sender, rcpts, over_tls) == ("exfilguard@example.com", ["soc@example.com"], True)
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(mail["Subject"]).startswith("[ExfilGuard CRITICAL]")


def test_a_server_certificate_from_another_ca_never_sees_the_login(relay: Relay, tmp_path: Path) -> None:
    other = pki.CertificateAuthority(tmp_path / "other-ca")
    other.init_ca("Someone else")
    sink = EmailSink(relay.address, "exfilguard@example.com", ["soc@example.com"], starttls=True,
                     username=USER, password_file=str(_password_file(tmp_path)), ca=str(other.ca_cert_path))
    try:
        with pytest.raises(SinkError, match="did not verify") as failure:
            sink.deliver(alert())
    finally:
        sink.close()
    assert failure.value.retry is False  # retrying would offer the login to the same impostor
    assert relay.mailbox.logins == [] and relay.mailbox.mails == []


def test_the_relay_refuses_mail_without_starttls_and_the_sink_says_so(relay: Relay) -> None:
    sink = EmailSink(relay.address, "exfilguard@example.com", ["soc@example.com"])
    try:
        with pytest.raises(SinkError, match="SMTP 530"):
            sink.deliver(alert())
    finally:
        sink.close()
    assert relay.mailbox.mails == []


def test_config_refuses_a_login_over_plaintext_and_resolves_files_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(
        "alerts:\n"
        "  - type: email\n"
        "    smtp: mail.example.com:587\n"
        "    sender: exfilguard@example.com\n"
        "    to: [soc@example.com]\n"
        "    username: soc-bot\n"
        "    password_file: smtp-password\n"
    )
    with pytest.raises(YamlError) as failure:
        cfg.load(path)
    assert "in the clear" in str(failure.value) and str(path) in str(failure.value)
    path.write_text(path.read_text() + "    starttls: true\n    ca: mail-ca.crt\n")
    [sink] = cfg.load(path).alerts
    assert isinstance(sink, cfg.EmailSink)
    assert (sink.password_file, sink.ca) == (str(tmp_path / "smtp-password"), str(tmp_path / "mail-ca.crt"))


def test_dispatcher_builds_the_sink_with_its_ca(relay: Relay, tmp_path: Path) -> None:
    spec = cfg.EmailSink(type="email", smtp=relay.address, sender="exfilguard@example.com",
                         to=["soc@example.com"], starttls=True, username=USER,
                         password_file=str(_password_file(tmp_path)), ca=str(relay.ca_path))
    dispatcher = Dispatcher.from_config([spec])
    try:
        dispatcher.send(alert())
        assert dispatcher.flush(20)
    finally:
        dispatcher.close(5)
    assert len(relay.mailbox.mails) == 1 and relay.mailbox.logins == [(USER, PASSWORD)]
