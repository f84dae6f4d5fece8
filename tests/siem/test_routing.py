"""Routing on every sink (min_severity, policies, tags), webhook headers and templates, config errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import config as cfg
from collector.alerts.dispatch import Dispatcher, build_sink, check_sinks
from collector.alerts.errors import SinkFileError, SinkSetupError
from collector.alerts.routing import Route
from collector.alerts.sinks.jsonl import JsonlSink
from collector.alerts.sinks.webhook import WebhookSink
from collector.forward.listener import build_destination
from collector.tls import pki
from common.yamlfile import YamlError
from tests.helpers import REPO, write_collector_config
from tests.siem import samples
from tests.siem.receivers import HttpReceiver
from tests.siem.schemas import ecs_problems


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


def alert(
    policy: str = "usb-copy-database", severity: str = "critical", tags: tuple[str, ...] = ()
) -> dict[str, Any]:
    body = samples.alert()
    body.update({"policy.id": policy, "severity": severity, "policy.tags": list(tags)})
    return body


def test_route_filters_by_severity_policy_glob_and_tag() -> None:
    assert Route().accepts(alert(severity="low"))
    high = Route(min_severity="high")
    assert high.accepts(alert(severity="critical")) and high.accepts(alert(severity="high"))
    assert not high.accepts(alert(severity="medium"))
    usb = Route(policies=("usb-*", "agent-silent"))
    assert usb.accepts(alert("usb-bulk-copy")) and usb.accepts(alert("agent-silent"))
    assert not usb.accepts(alert("mass-read")) and not usb.accepts(alert("agent-silent-2"))
    attack = Route(tags=("T1052*",))
    assert attack.accepts(alert(tags=("exfiltration", "T1052.001")))
    assert not attack.accepts(alert(tags=("exfiltration",))) and not attack.accepts(alert())
    both = Route(min_severity="high", policies=("usb-*",))
    assert not both.accepts(alert("mass-read", "critical")) and not both.accepts(alert("usb-x", "low"))


def write_config(tmp_path: Path, alerts: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"store: {tmp_path}/c.db\npolicies: []\nalerts:\n{alerts}")
    return path


def test_only_high_pages_everything_goes_to_the_siem(tmp_path: Path, receiver: HttpReceiver) -> None:
    path = write_config(
        tmp_path,
        f"""  - type: webhook
    url: {receiver.url}/page
    min_severity: high
    template: slack
  - type: jsonl
    path: siem.jsonl
    format: ecs
""",
    )
    dispatcher = Dispatcher.from_config(cfg.load(path).alerts)
    for severity in ("low", "medium", "high", "critical"):
        dispatcher.send(alert(severity=severity))
    assert dispatcher.flush(10)
    dispatcher.close()
    pages = receiver.wait_for(2)
    assert len(pages) == 2
    assert [p.json()["text"].split("]")[0] for p in pages] == ["[ExfilGuard HIGH", "[ExfilGuard CRITICAL"]
    lines = [json.loads(line) for line in (tmp_path / "siem.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(ecs_problems(doc) == [] for doc in lines)
    assert dispatcher.stats()["webhook"] == {"sent": 2, "failed": 0, "dropped": 0, "filtered": 2}


HOOK = "  - type: webhook\n    url: http://x\n"


@pytest.mark.parametrize(
    ("entry", "key", "line"),
    [
        ("  - type: stdout\n    min_severity: severe\n", "alerts[0].min_severity", 5),
        ("  - type: stdout\n    policies: ['usb copy']\n", "alerts[0].policies[0]", 5),
        ("  - type: jsonl\n    path: a\n    format: cef\n", "alerts[0].format", 6),
        (f"{HOOK}    headers: {{Authorization: Splunk abc}}\n", "alerts[0].webhook", 4),
        (f"{HOOK}    headers: {{X: {{file: a, env: B}}}}\n", "alerts[0].headers.X", 6),
        (f"{HOOK}    headers: {{X: \"a\\nb\"}}\n", "alerts[0].headers.X.value", 6),
        ("  - type: webhook\n    url: http://x\n    template: pagerduty\n", "alerts[0].webhook", 4),
        ("  - type: syslog\n    address: h:6514\n    ca: ca.pem\n", "alerts[0].syslog", 4),
        ("  - type: syslog\n    address: h:6514\n    transport: ssl\n", "alerts[0].transport", 6),
    ],
)
def test_config_errors_are_located(tmp_path: Path, entry: str, key: str, line: int) -> None:
    with pytest.raises(YamlError) as caught:
        cfg.load(write_config(tmp_path, entry))
    assert (caught.value.key, caught.value.line) == (key, line)


def test_secret_headers_are_sent_never_logged(
    tmp_path: Path, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "hec.token").write_text("s3cr3t-token\n")
    monkeypatch.setenv("EXFILGUARD_TEST_KEY", "k3y-from-env")
    path = write_config(
        tmp_path,
        f"""  - type: webhook
    url: {receiver.url}/services/collector/event
    template: splunk-hec
    format: ecs
    max_retries: 1
    headers:
      Authorization: {{file: hec.token, prefix: "Splunk "}}
      X-Api-Key: {{env: EXFILGUARD_TEST_KEY}}
      X-Source: exfilguard-test
""",
    )
    sink = build_sink(cfg.load(path).alerts[0])
    caplog.set_level(logging.DEBUG)
    receiver.mode = "status:500"
    sink.send(alert())
    assert sink.flush(10)
    receiver.mode = "ok"
    sink.send(alert())
    assert sink.flush(10)
    sink.close()
    (got,) = receiver.wait_for(1)
    assert got.headers["authorization"] == "Splunk s3cr3t-token"
    assert got.headers["x-api-key"] == "k3y-from-env"
    assert got.headers["x-source"] == "exfilguard-test"
    hec = got.json()
    assert (hec["sourcetype"] == "exfilguard:alert" and hec["host"] == "ws-1") or hec["host"]
    assert ecs_problems(hec["event"]) == []
    assert "HTTP 500" in caplog.text  # the failures were logged ...
    assert "s3cr3t" not in caplog.text and "k3y" not in caplog.text and "s3cr3t" not in repr(sink)


def test_missing_secret_is_a_located_setup_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "  - type: webhook\n    url: http://127.0.0.1:1/x\n    headers: {Authorization: {file: no.token}}\n",
    )
    with pytest.raises(SinkFileError) as caught:
        build_sink(cfg.load(path).alerts[0])
    assert caught.value.path == str(tmp_path / "no.token")
    path = write_config(
        tmp_path,
        "  - type: webhook\n    url: http://127.0.0.1:1/x\n    headers: {X-Token: {env: EXFILGUARD_UNSET}}\n",
    )
    with pytest.raises(SinkSetupError, match=r"\$EXFILGUARD_UNSET"):
        build_sink(cfg.load(path).alerts[0])


def test_builtin_templates_shape_slack_teams_pagerduty(tmp_path: Path, receiver: HttpReceiver) -> None:
    (tmp_path / "pd.key").write_text("R0UT1NGKEY")
    entries = "".join(
        f"  - type: webhook\n    url: {receiver.url}/{name}\n    template: {name}\n"
        for name in ("slack", "teams")
    )
    entries += f"  - type: webhook\n    url: {receiver.url}/pd\n    template: pagerduty\n"
    entries += "    routing_key: {file: pd.key}\n"
    dispatcher = Dispatcher.from_config(cfg.load(write_config(tmp_path, entries)).alerts)
    dispatcher.send(alert())
    dispatcher.send(samples.alert(repeat_of="first-alert"))
    assert dispatcher.flush(10)
    dispatcher.close()
    got = {r.path: r.json() for r in receiver.wait_for(6)}
    assert len(receiver.accepted) == 6
    slack = got["/slack"]
    assert slack["text"].startswith("[ExfilGuard CRITICAL] Database copied")
    facts = json.dumps(slack["attachments"][0]["blocks"])
    assert "4C530001230" in facts and "alice" in facts
    card = got["/teams"]["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"
    pages = [r.json() for r in receiver.accepted if r.path == "/pd"]
    assert {p["routing_key"] for p in pages} == {"R0UT1NGKEY"}
    assert all(p["event_action"] == "trigger" and p["payload"]["severity"] == "critical" for p in pages)
    assert pages[1]["dedup_key"] == "first-alert"  # the follow-up updates the first incident
    assert pages[0]["payload"]["source"] == alert()["host.name"]
    assert pages[0]["payload"]["class"] == "usb-copy-database"


def test_jinja_template_file(tmp_path: Path, receiver: HttpReceiver) -> None:
    (tmp_path / "hook.json").write_text(
        '{"who": {{ alert["user.name"] | tojson }}, "rule": {{ doc["rule"]["id"] | tojson }},'
        ' "sev": {{ severity | tojson }}}'
    )
    (tmp_path / "bad.json").write_text('{"x": {{ alert["no.such.field"] }}}')
    entries = (
        f"  - type: webhook\n    url: {receiver.url}/good\n    template: hook.json\n    format: ecs\n"
        f"  - type: webhook\n    url: {receiver.url}/bad\n    template: bad.json\n"
    )
    dispatcher = Dispatcher.from_config(cfg.load(write_config(tmp_path, entries)).alerts)
    dispatcher.send(alert())
    assert dispatcher.flush(10)
    dispatcher.close()
    (got,) = receiver.wait_for(1)
    assert got.json() == {"who": "alice", "rule": "usb-copy-database", "sev": "critical"}
    assert dispatcher.stats()["webhook"]["failed"] == 1  # the bad template: not retried, counted


def test_template_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("fine\n{% if %}\n")
    path = write_config(tmp_path, "  - type: webhook\n    url: http://127.0.0.1:1/x\n    template: t.txt\n")
    with pytest.raises(SinkFileError, match="line 2") as caught:
        build_sink(cfg.load(path).alerts[0])
    assert caught.value.path == str(tmp_path / "t.txt")


def test_sandbox_keeps_templates_away_from_python(tmp_path: Path, receiver: HttpReceiver) -> None:
    (tmp_path / "evil.txt").write_text("{{ alert.__class__.__mro__[1].__subclasses__() }}")
    path = write_config(tmp_path, f"  - type: webhook\n    url: {receiver.url}/x\n    template: evil.txt\n")
    sink = build_sink(cfg.load(path).alerts[0])
    sink.send(alert())
    assert sink.flush(10)
    sink.close()
    assert sink.failed == 1 and receiver.accepted == []


def test_every_sink_takes_a_format(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "a.jsonl")
    sink.configure(Route(), "ocsf")
    sink.send(alert())
    assert sink.flush(10)
    sink.close()
    (line,) = (tmp_path / "a.jsonl").read_text().splitlines()
    assert json.loads(line)["class_uid"] == 2006


def test_https_webhook_verifies_against_its_ca(tmp_path: Path) -> None:
    authority = pki.CertificateAuthority(tmp_path / "pki")
    authority.init_ca("Hook test CA")
    server = authority.issue_server("127.0.0.1", ["localhost"])
    assert server.cert_path is not None and server.key_path is not None
    receiver = HttpReceiver(tls=(server.cert_path, server.key_path))
    try:
        trusted = WebhookSink(receiver.url + "/hook", max_retries=0, ca=str(authority.ca_cert_path))
        system = WebhookSink(receiver.url + "/hook", max_retries=0)  # the system store lacks this CA
        for sink in (trusted, system):
            sink.send(alert())
            assert sink.flush(10)
            sink.close()
        assert (trusted.sent, system.sent, system.failed) == (1, 0, 1)
        assert len(receiver.wait_for(1)) == 1
    finally:
        receiver.close()


def test_collector_refuses_to_start_without_a_sink_s_secret(tmp_path: Path) -> None:
    config = write_collector_config(
        tmp_path,
        alerts=[{"type": "webhook", "url": "http://127.0.0.1:9/hook",
                 "headers": {"Authorization": {"file": "missing.token"}}}],
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'missing.token'}: webhook header Authorization: cannot read" in done.stderr


def test_tls_files_that_will_not_load_are_named_before_start(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    path = write_config(
        tmp_path,
        "  - type: syslog\n    address: siem.example.com:6514\n    transport: tls\n    ca: none.pem\n"
        "  - type: webhook\n    url: https://hooks.example.com/x\n    ca: bad.pem\n",
    )
    specs = cfg.load(path).alerts
    with pytest.raises(SinkFileError) as caught:
        check_sinks(specs[:1])
    assert caught.value.path == str(tmp_path / "none.pem")
    with pytest.raises(SinkFileError) as caught:
        check_sinks(specs[1:])
    assert caught.value.path == str(tmp_path / "bad.pem") and "CA bundle" in caught.value.reason
    bad_ca = str(tmp_path / "bad.pem")
    destination = cfg.HttpDestination(name="es", type="elasticsearch", url="https://es:9200", ca=bad_ca)
    with pytest.raises(SinkFileError):
        build_destination(destination)
