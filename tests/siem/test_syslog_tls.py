"""Alerts over syslog TLS (RFC 5425, octet counting) to a real rsyslogd; its certificate is verified."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import config as cfg
from collector.alerts.dispatch import Dispatcher
from collector.alerts.sinks.syslog import SyslogSink
from collector.forward.syslog import SyslogTransport
from collector.tls import pki
from tests.siem import samples
from tests.siem.rsyslog import Rsyslog, RsyslogUnavailable
from tests.siem.schemas import ecs_problems


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    try:
        receiver = Rsyslog.start(tmp_path_factory.mktemp("rsyslog"))
    except RsyslogUnavailable as exc:
        pytest.skip(str(exc))
    yield receiver
    receiver.stop()


def test_alerts_reach_rsyslog_over_tls_as_cef_and_ecs(rsyslog: Rsyslog, tmp_path: Path) -> None:
    before = len(rsyslog.lines())
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"""store: c.db
policies: []
alerts:
  - type: syslog
    address: {rsyslog.address}
    transport: tls
    ca: {rsyslog.ca_path}
  - type: syslog
    address: {rsyslog.address}
    transport: tls
    ca: {rsyslog.ca_path}
    server_name: localhost
    format: ecs
    min_severity: critical
"""
    )
    dispatcher = Dispatcher.from_config(cfg.load(config).alerts)
    first, second = samples.alert(), samples.alert()
    second["severity"] = "high"
    dispatcher.send(first)
    dispatcher.send(second)
    assert dispatcher.flush(15)
    dispatcher.close()
    lines = rsyslog.wait_for(before + 3)[before:]
    assert len(lines) == 3, lines
    cef = sorted(line for line in lines if line.startswith("CEF:0|ExfilGuard|"))
    assert len(cef) == 2 and all("cs1Label=deviceSerial cs1=4C530001230" in line for line in cef)
    (ecs,) = [json.loads(line) for line in lines if line.startswith("{")]
    assert ecs["event"]["id"] == first["id"] and ecs["rule"]["id"] == "usb-copy-database"
    assert ecs_problems(ecs) == []
    assert dispatcher.stats()["syslog"] == {"sent": 3, "failed": 0, "dropped": 0, "filtered": 1}


def test_a_receiver_that_does_not_verify_gets_nothing(rsyslog: Rsyslog, tmp_path: Path) -> None:
    other = pki.CertificateAuthority(tmp_path / "other")
    other.init_ca("Someone else's CA")
    before = len(rsyslog.lines())
    wrong_ca = SyslogSink(SyslogTransport(rsyslog.address, "tls", ca=str(other.ca_cert_path)), max_retries=3)
    wrong_name = SyslogSink(SyslogTransport(rsyslog.address, "tls", ca=str(rsyslog.ca_path),
                                            server_name="siem.example.com"), max_retries=3)  # fmt: skip
    for sink in (wrong_ca, wrong_name):
        sink.send(samples.alert())
        assert sink.flush(10)
        sink.close()
        # Refused at once, not retried: the receiver is not who the config names.
        assert (sink.sent, sink.failed) == (0, 1)
    good = SyslogSink(SyslogTransport(rsyslog.address, "tls", ca=str(rsyslog.ca_path)))
    good.send(samples.alert())
    assert good.flush(10)
    good.close()
    assert len(rsyslog.wait_for(before + 1)) == before + 1  # only the verified one arrived


def test_octet_counting_carries_a_long_message_whole(rsyslog: Rsyslog) -> None:
    before = len(rsyslog.lines())
    body = samples.alert()
    body["summary"] = "x" * 20_000 + " end"
    sink = SyslogSink(SyslogTransport(rsyslog.address, "tls", ca=str(rsyslog.ca_path)))
    sink.configure(sink.route, "ocsf")
    sink.send(body)
    assert sink.flush(10)
    sink.close()
    (line,) = rsyslog.wait_for(before + 1)[before:]
    assert json.loads(line)["message"].endswith("x end")
