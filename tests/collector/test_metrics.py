"""Prometheus metrics of a real collector process: scraped over HTTP while real gRPC streams move them."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector import config as collector_config
from collector.metrics import CollectorMetrics
from common.yamlfile import YamlError
from protos import exfilguard_pb2 as pb
from tests.helpers import (
    REPO,
    AgentStream,
    free_port,
    make_event,
    make_events,
    start_collector,
    wait_for,
    write_collector_config,
)

POLICY = """
policies:
  - id: test-db-read
    title: Database file read
    severity: high
    when: {event.action: file.read}
    suppress: {by: [agent.id], window: 1h}
    summary: "{user.name} read {file.path}"
    tags: [t]
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def replace_file(path: Path, text: str) -> None:
    """Write atomically, so the collector's reload never reads a half-written policy file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def scrape(port: int) -> Samples:
    """Every sample of one scrape of /metrics, keyed by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when it is not exposed."""
    return samples.get((name, frozenset(labels.items())))


def until(port: int, name: str, expected: float, timeout: float = 10.0, **labels: str) -> Samples:
    """Scrape (bounded polling) until the sample has the expected value; the last scrape."""
    last: list[Samples] = [{}]

    def reached() -> bool:
        last[0] = scrape(port)
        return value(last[0], name, **labels) == expected

    try:
        wait_for(reached, timeout, f"{name}{labels or ''} == {expected}")
    except TimeoutError:
        raise AssertionError(
            f"{name}{labels}: {value(last[0], name, **labels)}, expected {expected}"
        ) from None
    return last[0]


def test_counters_move_by_exactly_what_real_streams_did(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "read.yaml").write_text(POLICY)
    port = free_port()
    config = write_collector_config(
        tmp_path,
        metrics_listen=f"127.0.0.1:{port}",
        policies=[str(policies)],
        policy_reload_seconds=0.2,
        policy_rebuild_hours=0,
    )
    with start_collector(config) as collector:
        before = scrape(port)
        assert value(before, "exfilguard_collector_info", version="0.1.0") == 1
        assert value(before, "exfilguard_agents_connected") == 0
        assert value(before, "exfilguard_events_ingested_total") == 0
        assert value(before, "exfilguard_policies") == 1

        with AgentStream(collector.address, "m1") as stream:
            assert stream.ack() == 0
            until(port, "exfilguard_agents_connected", 1)
            stream.send_events(make_events("m1", 1, 10))
            assert stream.ack() == 10
            stream.send_events(make_events("m1", 5, 12))  # 6 resent, 2 new
            assert stream.ack() == 12
            gap = make_event("m1", 13, action="agent.gap", exfilguard=pb.Extensions(gap=pb.Gap(lost=7)))
            stream.send_events([gap])
            assert stream.ack() == 13
            after = scrape(port)
            assert value(after, "exfilguard_events_ingested_total") == 13
            assert value(after, "exfilguard_events_duplicate_total") == 6
            assert value(after, "exfilguard_batches_acked_total") == 3
            assert value(after, "exfilguard_store_ingest_seconds_count") == 3  # one commit each
            assert value(after, "exfilguard_streams_open") == 1
            assert value(after, "exfilguard_agents_known") == 1
            until(port, "exfilguard_baseline_users", 1)  # alice, named by every event
            # 12 file.read events: one alert goes out, the other 11 fold into its window.
            until(port, "exfilguard_alerts_raised_total", 1, policy_id="test-db-read", severity="high")
            until(port, "exfilguard_alerts_folded_total", 11, policy_id="test-db-read")
            until(port, "exfilguard_alert_deliveries_total", 1, sink="jsonl", result="sent")
            # Figures the store keeps (read at most every few seconds).
            until(port, "exfilguard_agent_gaps_total", 1)
            until(port, "exfilguard_agent_events_lost_total", 7)
            until(port, "exfilguard_store_unsealed_events", 0)  # the sealer caught up
        until(port, "exfilguard_agents_connected", 0)
        assert value(scrape(port), "exfilguard_streams_open") == 0

        # A malformed batch (another agent's event) and a stream without a hello are counted by reason.
        with AgentStream(collector.address, "m1") as stream:
            assert stream.ack() == 13
            stream.send_events([make_event("someone-else", 14)])
            assert stream.status()[0] == grpc.StatusCode.INVALID_ARGUMENT
        heartbeat_first = pb.AgentMessage(heartbeat=pb.Heartbeat(backlog=1))
        with AgentStream(collector.address, None, first=heartbeat_first) as stream:
            assert stream.status()[0] == grpc.StatusCode.INVALID_ARGUMENT
        samples = until(
            port, "exfilguard_stream_rejections_total", 1, code="INVALID_ARGUMENT", reason="bad_batch"
        )
        assert (
            value(samples, "exfilguard_stream_rejections_total", code="INVALID_ARGUMENT", reason="no_hello")
            == 1
        )
        assert value(samples, "exfilguard_events_ingested_total") == 13  # nothing of the bad batch stored
        # A connection that has not said hello holds a pending slot, not an agent stream.
        with AgentStream(collector.address, None):
            until(port, "exfilguard_streams_pending", 1)
            assert value(scrape(port), "exfilguard_streams_open") == 0
        until(port, "exfilguard_streams_pending", 0)

        # Policy reloads: a broken file is refused (counted), a good one loaded.
        replace_file(policies / "read.yaml", POLICY.replace("window: 1h", "window: soon"))
        until(port, "exfilguard_policy_reloads_total", 1, result="refused")
        second = POLICY.split("policies:")[1].replace("test-db-read", "test-db-read-2")
        replace_file(policies / "read.yaml", POLICY + second)
        samples = until(port, "exfilguard_policy_reloads_total", 1, result="loaded")
        assert value(samples, "exfilguard_policies") == 2
        assert collector.stop() == 0


def test_collectors_in_one_process_have_registries_of_their_own() -> None:
    first, second = CollectorMetrics(), CollectorMetrics()  # the same names twice: no clash
    first.events_ingested.inc(5)
    assert first.registry.get_sample_value("exfilguard_events_ingested_total") == 5
    assert second.registry.get_sample_value("exfilguard_events_ingested_total") == 0


def _config_error(tmp_path: Path, text: str) -> YamlError:
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    with pytest.raises(YamlError) as err:
        collector_config.load(path)
    return err.value


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("log_level: info\nmetrics_listen: nohost\n", 2, "expected host:port"),
        ("metrics_listen: 127.0.0.1:99999\n", 1, "expected host:port"),
        ("metrics_listen: 0.0.0.0:9464\n", 1, "only on a loopback address unless metrics_allow_remote"),
        ("metrics_allow_remote: false\nmetrics_listen: 10.0.0.5:9464\n", 2, "not on 10.0.0.5"),
    ],
)
def test_bad_metrics_address_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    error = _config_error(tmp_path, text)
    assert (error.path, error.line, error.key) == (str(tmp_path / "collector.yaml"), line, "metrics_listen")
    assert words in error.message


def test_remote_metrics_need_explicit_permission(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text("metrics_listen: 0.0.0.0:9464\nmetrics_allow_remote: true\n")
    assert collector_config.load(path).metrics_listen == "0.0.0.0:9464"
    path.write_text("metrics_listen: '[::1]:9464'\n")
    assert collector_config.load(path).metrics_listen == "[::1]:9464"


def test_collector_refuses_to_start_on_a_bad_metrics_address(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path, metrics_listen="0.0.0.0:9464")
    line = config.read_text().splitlines().index("metrics_listen: 0.0.0.0:9464") + 1
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{config}:{line}:1: metrics_listen: " in done.stderr


def test_metrics_port_in_use_is_a_clear_start_failure(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_collector_config(tmp_path, metrics_listen=address)
        done = subprocess.run(
            [sys.executable, "-m", "collector.main", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert f"{address}: metrics: cannot listen" in done.stderr


def test_mtls_refusals_are_counted_by_reason(tmp_path: Path) -> None:
    from tests.deploy.test_mtls import Site  # a real collector demanding client certificates

    site = Site(tmp_path)
    mine, revoked = site.ca.issue_agent("agent-1"), site.ca.issue_agent("agent-3")
    site.ca.revoke_agent("agent-3")
    site.start()
    try:
        with site.stream("agent-2", mine) as stream:  # claims another agent's id
            assert stream.status()[0] == grpc.StatusCode.PERMISSION_DENIED
        with site.stream("agent-3", revoked) as stream:
            assert stream.status()[0] == grpc.StatusCode.PERMISSION_DENIED
        registry = site.collector.metrics.registry

        def rejections(code: str, reason: str) -> float | None:
            labels = {"code": code, "reason": reason}
            return registry.get_sample_value("exfilguard_stream_rejections_total", labels)

        wait_for(lambda: rejections("PERMISSION_DENIED", "agent_mismatch") == 1, 10, "agent_mismatch counted")
        wait_for(lambda: rejections("PERMISSION_DENIED", "cert_revoked") == 1, 10, "cert_revoked counted")
        # Scraped from this (non-loop) thread, the loop's figures are there too.
        assert registry.get_sample_value("exfilguard_agents_connected") == 0
    finally:
        site.close()
