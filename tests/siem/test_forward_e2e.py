"""The collector, as its own process, forwards every stored event to a real rsyslogd over TLS and to
an Elasticsearch-shaped receiver; a syslog outage holds that cursor only, agents keep being
acknowledged, the metrics show the lag, and nothing is missing once the receiver is back."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.forward.formatted import default_helpers
from tests.helpers import (
    AgentStream,
    free_port,
    make_events,
    start_collector,
    wait_for,
    write_collector_config,
)
from tests.siem.receivers import HttpReceiver
from tests.siem.rsyslog import Rsyslog, RsyslogUnavailable
from tests.siem.schemas import ecs_problems, ocsf_problems


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    try:
        receiver = Rsyslog.start(tmp_path / "rsyslog")
    except RsyslogUnavailable as exc:
        pytest.skip(str(exc))
    yield receiver
    receiver.stop()


def syslog_ids(receiver: Rsyslog) -> set[str]:
    return {json.loads(line)["metadata"]["uid"] for line in receiver.lines() if line.startswith("{")}


def metric(text: str, name: str, destination: str) -> float:
    found = re.search(rf'^{name}\{{destination="{destination}"\}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} for {destination} not in the metrics"
    return float(found.group(1))


def test_collector_forwards_every_event_through_an_outage(rsyslog: Rsyslog, tmp_path: Path) -> None:
    elastic = HttpReceiver()
    metrics_port = free_port()
    config = write_collector_config(
        tmp_path / "collector",
        metrics_listen=f"127.0.0.1:{metrics_port}",
        forward=[
            {"name": "siem", "type": "syslog", "address": rsyslog.address, "transport": "tls",
             "ca": str(rsyslog.ca_path), "format": "ocsf", "retry_max_seconds": 0.3},
            {"name": "elastic", "type": "elasticsearch", "url": elastic.url, "index": "exfilguard",
             "headers": {"Authorization": {"env": "EXFILGUARD_TEST_ES_KEY", "prefix": "ApiKey "}}},
        ],
    )  # fmt: skip
    collector = start_collector(config, env={"EXFILGUARD_TEST_ES_KEY": "es-key"})
    stream = AgentStream(collector.address, "agent-e2e")
    try:
        assert stream.ack() == 0  # the hello's answer: nothing stored yet
        stream.send_events(make_events("agent-e2e", 1, 40))
        assert stream.ack() == 40
        wait_for(lambda: len(syslog_ids(rsyslog)) == 40, what="40 events in rsyslog")
        wait_for(lambda: sum(len(r.lines()) // 2 for r in elastic.accepted) >= 40, what="40 in elastic")
        rsyslog.stop()  # the SIEM goes away; agents must not notice
        stream.send_events(make_events("agent-e2e", 41, 100))
        assert stream.ack() == 100
        scrape = f"http://127.0.0.1:{metrics_port}/metrics"

        failures = r'exfilguard_forward_failures_total\{destination="siem",reason="connection"\}'
        failed = re.compile(failures + " [1-9]")

        def lagging() -> bool:
            # The 60 held events, and at least one failed delivery of them, in the same scrape.
            text = urllib.request.urlopen(scrape, timeout=5).read().decode()
            return metric(text, "exfilguard_forward_lag_events", "siem") == 60 and bool(failed.search(text))

        wait_for(lagging, what="the syslog lag and its failures in the metrics")
        wait_for(lambda: sum(len(r.lines()) // 2 for r in elastic.accepted) >= 100, what="elastic unaffected")
        rsyslog.restart()
        wait_for(lambda: len(syslog_ids(rsyslog)) == 100, timeout=20, what="the 60 held events in rsyslog")
    finally:
        stream.close()
        collector.stop()
        elastic.close()
    lines = [json.loads(line) for line in rsyslog.lines()]
    assert all(ocsf_problems(doc, "file_activity") == [] for doc in lines)
    docs = [doc for r in elastic.accepted for doc in r.lines()[1::2]]
    assert len({d["event"]["id"] for d in docs}) == 100 and all(ecs_problems(d) == [] for d in docs)
    assert all(r.headers["authorization"] == "ApiKey es-key" for r in elastic.accepted)
    assert "es-key" not in collector.log()


def test_the_forward_process_killed_is_restarted_and_resumes(tmp_path: Path) -> None:
    elastic = HttpReceiver()
    config = write_collector_config(
        tmp_path / "collector", forward=[{"name": "elastic", "type": "elasticsearch", "url": elastic.url}]
    )
    collector = start_collector(config)
    stream = AgentStream(collector.address, "agent-e2e")
    try:
        assert stream.ack() == 0
        stream.send_events(make_events("agent-e2e", 1, 40))
        assert stream.ack() == 40
        wait_for(lambda: len(_bulk_ids(elastic)) >= 40, what="40 events forwarded")
        child = _forward_pid(collector.log())
        if default_helpers():  # a helper (and multiprocessing's resource tracker) on 2 cores or more
            wait_for(lambda: len(_children(child)) >= 2, what="its formatting helper")
        helpers = _children(child)
        os.kill(child, signal.SIGKILL)  # forwarding dies; the collector goes on storing and acking
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in helpers), what="its helpers gone")
        stream.send_events(make_events("agent-e2e", 41, 90))
        assert stream.ack() == 90
        wait_for(lambda: _forward_pid(collector.log()) != child, what="a new forward process")
        wait_for(lambda: len(set(_bulk_ids(elastic))) == 90, what="the 50 later events forwarded")
    finally:
        stream.close()
        collector.stop()
        elastic.close()
    # Resumed from the cursor in the store: at most the batch the killed process had not saved, twice.
    assert len(_bulk_ids(elastic)) <= 90 + 40
    assert "forward process exited" in collector.log()


def _bulk_ids(receiver: HttpReceiver) -> list[str]:
    return [line["create"]["_id"] for r in receiver.accepted for line in r.lines()[::2]]


def _children(pid: int) -> list[int]:
    """The processes `pid` started (its formatting helpers and multiprocessing's resource tracker)."""
    tasks = Path(f"/proc/{pid}/task")
    found = [Path(f"{t}/children").read_text().split() for t in tasks.iterdir()] if tasks.exists() else []
    return [int(c) for part in found for c in part]


def _forward_pid(log: str) -> int:
    started = [json.loads(line)["pid"] for line in log.splitlines() if '"forward process started"' in line]
    assert started, "no forward process started"
    return int(started[-1])
