"""Alert sinks against real loopback receivers: JSONL file, webhook, syslog UDP and TCP, SMTP."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import config as cfg
from collector.alerts.dispatch import Dispatcher
from collector.alerts.sinks.email import EmailSink
from collector.alerts.sinks.jsonl import JsonlSink
from collector.alerts.sinks.syslog import SyslogSink, cef
from collector.alerts.sinks.webhook import WebhookSink
from collector.forward.syslog import SyslogTransport
from tests.policy.receivers import SmtpReceiver, SyslogTcpReceiver, SyslogUdpReceiver, WebhookReceiver


def alert(n: int = 1, **extra: Any) -> dict[str, Any]:
    body = {
        "id": f"alert-{n}",
        "@timestamp": "2026-11-18T10:00:00.000000Z",
        "policy.id": "usb-copy-database",
        "policy.title": "Database copied to removable media",
        "policy.set_hash": "ab" * 32,
        "severity": "critical",
        "summary": "alice copied /srv/db/customers.sqlite to SanDisk serial S-1",
        "host.name": "ws-1",
        "user.name": "alice",
        "agent.id": "agent-1",
        "count": 1,
        "evidence": ["ev-1", "ev-2"],
        "device.serial": "S-1",
        "file.path": "/media/alice/STICK/holiday.jpg",
        "file.size": 52428800,
        "exfilguard.source.path": "/srv/db/customers.sqlite",
    }
    body.update(extra)
    return body


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(fail_first=2)
    yield receiver
    receiver.close()


def test_jsonl_appends_one_object_a_line(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "log" / "alerts.jsonl")
    sink.send(alert(1))
    sink.send(alert(2))
    assert sink.flush(10)
    sink.close()
    lines = (tmp_path / "log" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["alert-1", "alert-2"]


def test_webhook_retries_with_backoff_until_delivered(webhook: WebhookReceiver) -> None:
    sink = WebhookSink(webhook.url, timeout=5, max_retries=4)
    sink.send(alert())
    got = webhook.wait_for(1)
    sink.close()
    assert webhook.attempts == 3  # two 503s, then success
    assert got[0]["json"] == alert()
    assert got[0]["content_type"] == "application/json"
    assert (sink.sent, sink.failed) == (1, 0)


def test_webhook_send_never_blocks_ingest() -> None:
    receiver = WebhookReceiver()
    receiver.release.clear()  # the receiver hangs on every request
    sink = WebhookSink(receiver.url, timeout=30, max_retries=0)
    try:
        for n in range(50):
            sink.send(alert(n))  # returns at once although nothing can be delivered yet
        assert receiver.received == []
        receiver.release.set()
        assert len(receiver.wait_for(50)) == 50
    finally:
        sink.close()
        receiver.close()


def test_webhook_gives_up_after_max_retries() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = WebhookSink(f"http://127.0.0.1:{port}/hook", timeout=1, max_retries=1)
    sink.send(alert())
    assert sink.flush(30)
    sink.close()
    assert (sink.sent, sink.failed) == (0, 1)


RFC5424 = re.compile(r"^<(\d+)>1 (\S+) (\S+) exfilguard - ALERT \[exfilguard@32473 ([^\]]*)\] (CEF:0\|.*)$")


def check_syslog(message: str) -> None:
    m = RFC5424.match(message)
    assert m, message
    assert m.group(1) == str(10 * 8 + 2)  # authpriv.crit for a critical alert
    assert m.group(2) == "2026-11-18T10:00:00.000000Z"
    assert 'policy="usb-copy-database"' in m.group(4)
    head, _, ext = m.group(5).rpartition("|")
    assert (
        head.split("|")[:7]
        == [
            "CEF:0",
            "ExfilGuard",
            "ExfilGuard",
            head.split("|")[3],
            "usb-copy-database",
            "Database copied to removable media",
            "10",
        ][:7]
    )
    assert "suser=alice" in ext
    assert "filePath=/media/alice/STICK/holiday.jpg" in ext
    assert "cs1Label=deviceSerial cs1=S-1" in ext
    assert "externalId=alert-1" in ext


def test_syslog_udp_rfc5424_with_cef() -> None:
    receiver = SyslogUdpReceiver()
    sink = SyslogSink(SyslogTransport(receiver.address, "udp"))
    try:
        sink.send(alert())
        got = receiver.wait_for(1)
    finally:
        sink.close()
        receiver.close()
    check_syslog(got[0])


def test_syslog_tcp_octet_counted_frames() -> None:
    receiver = SyslogTcpReceiver()
    sink = SyslogSink(SyslogTransport(receiver.address, "tcp"))
    try:
        sink.send(alert(1))
        sink.send(alert(2, summary="line one\nline two = with | pipes"))
        got = receiver.wait_for(2)
    finally:
        sink.close()
        receiver.close()
    check_syslog(got[0])
    assert "msg=line one\\nline two \\= with | pipes" in got[1]


def test_cef_escapes_header_and_extension() -> None:
    body = alert()
    body.update({"policy.title": "a|b\\c", "user.name": "x=y"})
    line = cef(body)
    assert "|a\\|b\\\\c|" in line
    assert "suser=x\\=y" in line


def test_cef_and_mail_carry_the_users_risk_score() -> None:
    body = alert()
    assert "riskScore" not in cef(body)
    body["exfilguard.risk.score"] = 62
    assert cef(body).endswith(" cfp1Label=riskScore cfp1=62.0")
    sink = EmailSink("127.0.0.1:1", "exfilguard@example.com", ["soc@example.com"])
    try:
        text = sink.message(body).get_content()
    finally:
        sink.close()
    assert "User's risk score: 62" in text


def test_email_over_smtp() -> None:
    receiver = SmtpReceiver()
    sink = EmailSink(receiver.address, "exfilguard@example.com", ["soc@example.com", "ciso@example.com"])
    try:
        sink.send(alert())
        got = receiver.wait_for(1)
    finally:
        sink.close()
        receiver.close()
    sender, rcpts, raw = got[0]
    assert sender == "exfilguard@example.com"
    assert rcpts == ["soc@example.com", "ciso@example.com"]
    mail = email.message_from_string(raw, policy=email.policy.default)
    assert mail["Subject"].startswith(
        "[ExfilGuard CRITICAL] Database copied to removable media: alice copied"
    )
    assert isinstance(mail, email.message.EmailMessage)
    body = mail.get_content()
    assert "Device serial: S-1" in body
    assert "ev-2" in body


def test_dispatcher_from_config_feeds_every_sink(tmp_path: Path, webhook: WebhookReceiver) -> None:
    udp = SyslogUdpReceiver()
    specs: list[cfg.Sink] = [
        cfg.JsonlSink(type="jsonl", path=str(tmp_path / "a.jsonl")),
        cfg.WebhookSink(type="webhook", url=webhook.url),
        cfg.SyslogSink(type="syslog", address=udp.address, protocol="udp"),
    ]
    dispatcher = Dispatcher.from_config(specs)
    try:
        dispatcher.send(alert())
        assert dispatcher.flush(30)
        assert len(webhook.wait_for(1)) == 1
        assert len(udp.wait_for(1)) == 1
    finally:
        dispatcher.close()
        udp.close()
    assert json.loads((tmp_path / "a.jsonl").read_text())["id"] == "alert-1"
    assert dispatcher.stats()["webhook"]["sent"] == 1


def test_a_newline_in_a_file_name_forges_no_line_of_the_mail() -> None:
    """The fact lines an officer reads first: a file name holding a newline or an escape sequence
    stays on its own line, shown escaped; the JSON below carries it exactly."""
    receiver = SmtpReceiver()
    sink = EmailSink(receiver.address, "exfilguard@example.com", ["soc@example.com"])
    forged = "/media/alice/STICK/a.csv\nSeverity: low\r\nPolicy: holiday-photos\x1b[2J\u2028User: bob"
    try:
        sink.send(alert(1, **{"file.path": forged}))
        got = receiver.wait_for(1)
    finally:
        sink.close()
        receiver.close()
    body = email.message_from_string(got[0][2], policy=email.policy.default).get_content()
    facts = body.split("\n\n", 1)[0].splitlines()
    assert [line.split(":", 1)[0] for line in facts].count("Severity") == 1
    assert "Policy: usb-copy-database" in facts
    assert not [line for line in facts if line.startswith(("Policy: holiday", "User: bob"))]
    shown = "/media/alice/STICK/a.csv\\nSeverity: low\\r\\nPolicy: holiday-photos\\x1b[2J\\u2028User: bob"
    assert f"File: {shown}" in facts
    assert "\x1b" not in body.split("Alert (JSON):", 1)[0]
    document = json.loads(body.split("Alert (JSON):", 1)[1])
    assert document["file.path"] == forged
