"""Policy regexes run in linear time (RE2), backtracking patterns are refused at load, and a per-event
budget skips (and counts) what is still too slow, so no policy can stall ingest."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collector.policy import regex
from collector.policy.engine import STRIKE_WINDOW_SECONDS, SUSPEND_SECONDS, SUSPEND_STRIKES, PolicyEngine
from protos import exfilguard_pb2 as pb
from tests.helpers import AgentStream, make_event, start_collector, write_collector_config
from tests.policy.helpers import engine, event, fired, policy_set, problems_of

CATASTROPHIC = r"(a+)+$"  # Python's re: 25 s for 28 characters, doubling with each one more

REGEX_POLICY = """
policies:
  - id: odd-name
    title: Odd name
    severity: low
    when:
      event.action: file.write
      file.path: {regex: '%s'}
    summary: "{file.path}"
    tags: [t]
"""

TWO = """
policies:
  - id: first
    title: First
    severity: low
    when: {event.action: file.write}
    summary: "1"
    tags: [t]
  - id: second
    title: Second
    severity: low
    when: {event.action: file.write}
    summary: "2"
    tags: [t]
"""

PATHS = TWO.replace(
    "when: {event.action: file.write}", "when: {event.action: file.write, file.path: {startswith: /media/}}"
)


def test_a_backtracking_pattern_against_a_long_name_does_not_stall() -> None:
    runner = engine(REGEX_POLICY % CATASTROPHIC)
    name = "/media/stick/" + "a" * 100_000 + "!"
    started = time.monotonic()
    assert fired(runner, event("file.write", file__path=name)) == []
    assert fired(runner, event("file.write", file__path="/media/stick/" + "a" * 50)) == ["odd-name"]
    # RE2 takes microseconds here; Python's re would not finish in the lifetime of the machine.
    assert time.monotonic() - started < 2.0
    assert runner.stats()["skipped_by_policy"] == {}


def test_policy_test_cli_replays_it_promptly(tmp_path: Path) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(REGEX_POLICY % CATASTROPHIC)
    events = tmp_path / "events.jsonl"
    names = ["/m/" + "a" * n + "b" for n in (28, 40, 4000)] + ["/m/" + "a" * 30]
    events.write_text("".join(json.dumps(event("file.write", file__path=n)) + "\n" for n in names))
    cli = [sys.executable, "-c", "import sys; from admin import main; sys.exit(main())"]
    done = subprocess.run(
        [*cli, "policy", "test", str(policies), "--events", str(events), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["file.path"] for a in alerts] == [names[-1]]


@pytest.mark.parametrize(
    ("pattern", "code"),
    [
        (r"(\w+)/\1$", "EG114"),  # backreference
        (r"^(?!/tmp/).*\.zip$", "EG114"),  # negative lookahead
        (r"(?<=/media/)x", "EG114"),  # lookbehind
        (r"a++", "EG114"),  # possessive (Python 3.11 has it, RE2 does not)
        (r"([a-z]", "EG109"),  # not a regular expression at all
        (r"(a{1000}){1000}", "EG114"),  # valid, but RE2 would need more than its memory bound
    ],
)
def test_patterns_re2_cannot_run_are_refused_at_load(pattern: str, code: str) -> None:
    problems = [p for p in problems_of(REGEX_POLICY % pattern) if p.severity == "error"]
    assert [(p.code, p.item_id, p.key) for p in problems] == [(code, "odd-name", "when.file.path.regex")]


def test_regex_module_names_the_pattern() -> None:
    with pytest.raises(regex.NotLinear) as caught:
        regex.compile_pattern(r"(x)\1")
    assert caught.value.pattern == r"(x)\1"
    assert "backtracking" in caught.value.message
    assert regex.compile_pattern(r"\.(7z|gpg)$").search("/media/s/x.gpg")


def test_past_the_budget_the_rest_are_skipped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    # A budget no evaluation can meet: every policy overruns it alone, every event runs past it.
    runner = PolicyEngine(policy_set(TWO), suppression_seconds=0.0, budget_seconds=1e-9)
    with caplog.at_level(logging.WARNING, logger="collector.policy.engine"):
        # One overrun may be the machine's: "first" runs on until its third, then sits out.
        for _ in range(SUSPEND_STRIKES):
            assert fired(runner, event("file.write")) == ["first"]  # second skipped each time
        assert runner.stats()["suspended_policies"] == ["first"]
        for _ in range(SUSPEND_STRIKES):
            assert fired(runner, event("file.write")) == ["second"]  # first sits out
        assert fired(runner, event("file.write")) == []  # both sit out
    stats = runner.stats()
    assert stats["skipped_by_policy"] == {"second": SUSPEND_STRIKES + 1, "first": SUSPEND_STRIKES + 1}
    assert stats["suspended_policies"] == ["first", "second"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("used its policy budget" in m for m in messages) == 1  # rate-limited
    assert sum(f"suspended for {SUSPEND_SECONDS:.0f} s" in m for m in messages) == 2
    assert sum("before suspension" in m for m in messages) == 2 * (SUSPEND_STRIKES - 1)
    assert any("policy first took" in m for m in messages)


def test_a_single_stall_does_not_switch_a_policy_off() -> None:
    # Overruns spread wider than the strike window never add up to a suspension.
    runner = PolicyEngine(policy_set(TWO), suppression_seconds=0.0, budget_seconds=1e-9)
    for n in range(2 * SUSPEND_STRIKES):
        runner._overran("first", {}, 1.0, wall=n * STRIKE_WINDOW_SECONDS)
    assert runner.stats()["suspended_policies"] == []


class _CollectsOnRead(dict[str, Any]):
    """An event whose first read of file.path runs a full garbage collection (once)."""

    def get(self, key: str, default: Any = None) -> Any:
        if key == "file.path" and not self.get("collected"):
            self["collected"] = True
            gc.collect()
        return super().get(key, default)


def test_a_garbage_collection_is_not_a_policy_overrun() -> None:
    # A full collection of a large state can take longer than the budget; it is not the policy's.
    runner = PolicyEngine(policy_set(PATHS), suppression_seconds=0.0, budget_seconds=0.1)

    def slow_collection(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            time.sleep(0.3)

    gc.callbacks.append(slow_collection)
    try:
        alerts = runner.evaluate(_CollectsOnRead(event("file.write", file__path="/media/s/x")))
    finally:
        gc.callbacks.remove(slow_collection)
    assert [a.policy_id for a in alerts] == ["first", "second"]
    assert runner.stats()["skipped_by_policy"] == {}
    assert runner._strikes == {}


class _WaitsOnRead(dict[str, Any]):
    """An event whose first read of file.path waits 0.3 s off the CPU, as a process of a busy
    host waits for one."""

    def get(self, key: str, default: Any = None) -> Any:
        if key == "file.path" and not self.get("waited"):
            self["waited"] = True
            time.sleep(0.3)
        return super().get(key, default)


def test_waiting_for_a_cpu_is_not_a_policy_overrun() -> None:
    # On a loaded collector the wall time of an event is mostly other processes' turns: judged on
    # it, usb-copy-whole-collection and four more were skipped for real copies at load 10-14.
    runner = PolicyEngine(policy_set(PATHS), suppression_seconds=0.0, budget_seconds=0.1)
    alerts = runner.evaluate(_WaitsOnRead(event("file.write", file__path="/media/s/x")))
    assert [a.policy_id for a in alerts] == ["first", "second"]
    assert runner.stats()["skipped_by_policy"] == {}
    assert runner._strikes == {}


def test_a_generous_budget_skips_nothing() -> None:
    runner = PolicyEngine(policy_set(TWO), suppression_seconds=0.0)
    assert fired(runner, *(event("file.write") for _ in range(100))) == ["first", "second"] * 100
    assert runner.stats()["skipped_by_policy"] == {}


def test_a_real_collector_keeps_ingesting_past_the_pattern(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "odd.yaml").write_text(REGEX_POLICY % CATASTROPHIC)
    config = write_collector_config(tmp_path / "collector", policies=[str(policies)])
    long_name = "/media/stick/" + "a" * 50_000 + "!"
    short_name = "/media/stick/aaaa"
    with start_collector(config) as collector:
        with AgentStream(collector.address, "ws-1") as agent:
            started = time.monotonic()
            agent.send_events(
                [
                    make_event("ws-1", 1, action="file.write", file=pb.File(path=long_name, size=1)),
                    make_event("ws-1", 2, action="file.write", file=pb.File(path=short_name, size=1)),
                ]
            )
            acks = [agent.ack()]
            while acks[-1] < 2 and len(acks) < 10:
                acks.append(agent.ack())
            assert acks[-1] == 2
            assert time.monotonic() - started < 10  # Python's re would still be on event 1
        sink = tmp_path / "collector" / "alerts.jsonl"
        deadline = time.monotonic() + 10  # bounded polling for the sink's worker thread
        while time.monotonic() < deadline and not (sink.exists() and sink.read_text().strip()):
            time.sleep(0.05)
        assert [json.loads(line)["file.path"] for line in sink.read_text().splitlines()] == [short_name]
        assert collector.stop() == 0
