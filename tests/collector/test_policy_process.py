"""Policies run in a process of their own (collector/policy/process.py): alerts, restarts.

A broken policy set at start: tests/policy/test_listener.py (the collector names it and exits 1).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil

from tests.helpers import AgentStream, make_events, start_collector, wait_for, write_collector_config

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


def _policy_process(collector_pid: int) -> psutil.Process | None:
    for child in psutil.Process(collector_pid).children():
        try:
            if "collector.policy.process" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _alerts(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_alerts_come_from_the_policy_process_which_is_restarted_when_killed(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "read.yaml").write_text(POLICY)
    config = write_collector_config(tmp_path, policies=[str(policies)], policy_rebuild_hours=0)
    sink = tmp_path / "alerts.jsonl"
    with start_collector(config) as collector:
        child = wait_for(lambda: _policy_process(collector.pid), what="the policy process")
        assert child is not None
        with AgentStream(collector.address, "p1") as stream:
            assert stream.ack() == 0
            stream.send_events(make_events("p1", 1, 3))
            assert stream.ack() == 3
            first = wait_for(lambda: _alerts(sink), what="the first alert")
            assert first[0]["policy.id"] == "test-db-read" and first[0]["agent.id"] == "p1"

            os.kill(child.pid, signal.SIGKILL)
            def restarted() -> psutil.Process | None:
                found = _policy_process(collector.pid)
                return found if found is not None and found.pid != child.pid else None

            wait_for(restarted, what="a new policy process")
            assert len(_alerts(sink)) == 1  # events 2 and 3 folded into its hour-long window
            # The new process evaluates what arrives from now on: its suppression starts empty.
            stream.send_events(make_events("p1", 4, 4))
            assert stream.ack() == 4
            wait_for(lambda: len(_alerts(sink)) >= 2, timeout=20, what="an alert from the restarted process")
            alerts = _alerts(sink)
            assert alerts[1]["policy.id"] == "test-db-read" and "exfilguard.alert.repeat_of" not in alerts[1]
        assert collector.stop() == 0
    assert "policy process exited" in collector.log()


def test_what_the_pipe_carries_is_an_event_batch_byte_for_byte() -> None:
    from collector.policy.process import events_payload
    from protos import exfilguard_pb2 as pb
    from tests.eventcorpus import corpus

    sent = corpus(300)
    big = pb.Event()
    big.file.path = "x" * 40_000  # beyond the looked-up field heads
    sent.append(big)
    batch = pb.EventBatch()
    batch.events.extend(sent)
    stored = [event.SerializeToString() for event in sent]  # IngestResult.data
    assert events_payload(stored) == batch.SerializeToString()
    assert list(pb.EventBatch.FromString(events_payload(stored)).events) == sent
