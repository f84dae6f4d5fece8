"""The fault suite: real agent and collector processes through a full spool disk, a full store
disk, kill -9 loops, a stopped (SIGSTOP) collector and a PostgreSQL restart. Each test counts:
every event the agent produced is stored exactly once, or is counted by an agent.gap, exactly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.spool_disk import LOSSES_FILE, LossFile
from tests.e2e.harness import Pipeline, by_action, iter_test_numbers, wait_for
from tests.pg import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path)
    yield pipe
    pipe.close()


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `path`: a real file system that really runs out of space."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs that really runs out of space")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses more; returns it (delete it to give the space back)."""
    filler = disk / "filler"
    # unbuffered, and the suppress outside the file: a buffered file's close would flush what the
    # full disk refused once more, and raise ENOSPC after the suppress has ended
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 65536)
    return filler


def assert_exactly_once(events: list[dict[str, Any]], agent_id: str) -> None:
    """Sequences 1..n with no hole and no repeat, unique event ids."""
    mine = [e for e in events if e.get("agent.id") == agent_id]
    assert [int(e["event.sequence"]) for e in mine] == list(range(1, len(mine) + 1))
    assert not [i for i, n in Counter(str(e["event.id"]) for e in mine).items() if n > 1]


def all_tests_stored(pipe: Pipeline, expected: int) -> bool:
    """Every agent.test event 1..expected is in the store (once)."""
    if pipe.delivered_count() < expected:
        return False
    return sorted(iter_test_numbers(pipe.delivered())) == list(range(1, expected + 1))


def spooled(pipe: Pipeline) -> int:
    """How many events the agent has stored in its spool so far (its next sequence - 1)."""
    return int(pipe.spool_meta().get("next_sequence", "1")) - 1


@pytest.mark.root
def test_full_spool_disk_counts_every_refused_event_and_recovers_by_itself(pipeline: Pipeline) -> None:
    produced = 12_000  # a 2 MiB disk holds about half
    with tiny_disk(pipeline.agent_state, "2m"):
        first = pipeline.start_agent(test_events=produced)  # collector down: the spool fills its disk
        losses = LossFile(pipeline.agent_state / LOSSES_FILE)

        def lost() -> int:
            record = losses.load() or {}
            return int(record.get("losses", {}).get("disk_full", {}).get("lost", 0))

        # agent.start and the test events, each stored or counted; then a crash keeps the count.
        wait_for(lambda: spooled(pipeline) + lost() == produced + 1, 60, "every event stored or counted",
                 pipeline.diagnose)  # fmt: skip
        assert lost() > 500
        first.kill9()
        pipeline.start_collector()
        second = pipeline.start_agent()
        wait_for(lambda: bool(by_action(pipeline.delivered(), "agent.gap")), 60, "the agent.gap",
                 pipeline.diagnose)  # fmt: skip
        wait_for(lambda: pipeline.spool_rows() == 0, 30, "acknowledged space freed", pipeline.diagnose)
        assert second.terminate() == 0
        # After recovery: new events arrive, with no new loss.
        after = 2_000
        wait_for(lambda: pipeline.delivered_count() == spooled(pipeline), 30, "the agent.stop",
                 pipeline.diagnose)  # fmt: skip
        base = spooled(pipeline)
        third = pipeline.start_agent(test_events=after)
        wait_for(lambda: pipeline.delivered_count() == base + 1 + after and pipeline.spool_rows() == 0,
                 60, "the events produced after recovery", pipeline.diagnose)  # fmt: skip
        assert third.terminate() == 0
        wait_for(lambda: len(by_action(pipeline.delivered(), "agent.stop")) == 2, 30, "agent.stop",
                 pipeline.diagnose)  # fmt: skip
        agent_id = pipeline.agent_id()
    events = pipeline.delivered()
    assert_exactly_once(events, agent_id)
    gaps = by_action(events, "agent.gap")
    assert {g["exfilguard.gap.reason"] for g in gaps} == {"disk_full"}
    reported = sum(int(g["exfilguard.gap.lost"]) for g in gaps)
    # Run 1: agent.start + tests (killed: no agent.stop); runs 2 and 3: start and stop, + tests.
    made = (1 + produced) + 2 + (2 + after)
    assert len(events) - len(gaps) + reported == made, "every lost event is in a gap, exactly"
    starts = [int(e["event.sequence"]) for e in by_action(events, "agent.start")]
    late = [e for e in by_action(events, "agent.test") if int(e["event.sequence"]) > starts[-1]]
    assert sorted(iter_test_numbers(late)) == list(range(1, after + 1)), "events after recovery arrive"
    assert max(int(g["event.sequence"]) for g in gaps) < starts[-1], "no loss after recovery"
    missing = produced - (len(by_action(events, "agent.test")) - after)  # of the first run's tests
    assert missing <= reported <= missing + 3  # + agent.start of run 1, start and stop of run 2


@pytest.mark.root
def test_files_made_on_a_tagged_path_with_the_spool_disk_full_are_each_stored_or_counted(
    pipeline: Pipeline, tmp_path: Path,
) -> None:
    """The real sensors: thousands of files created on a tagged path while the collector is down
    and the spool's disk fills. agent.stop says how many events the run made: each one arrives
    or is counted in an agent.gap, exactly; files made after recovery all arrive."""
    tagged = tmp_path / "srv" / "db"
    tagged.mkdir(parents=True)
    with pipeline.agent_config.open("a") as config:
        config.write(f"tags:\n  {tagged}: [database]\n")
    with tiny_disk(pipeline.agent_state, "1m"):
        agent = pipeline.start_agent(sensors=True)
        wait_for(lambda: "started: id=" in agent.log_text(), 30, "the agent's sensors", pipeline.diagnose)
        losses = LossFile(pipeline.agent_state / LOSSES_FILE)

        def lost() -> int:
            record = losses.load() or {}
            return int(record.get("losses", {}).get("disk_full", {}).get("lost", 0))

        made = 1_500
        for n in range(made):
            (tagged / f"cust{n:05d}.csv").write_text(f"{n},customer\n")
        wait_for(lambda: lost() > 0, 60, "the spool's disk to fill", pipeline.diagnose)
        pipeline.start_collector()
        wait_for(lambda: bool(by_action(pipeline.delivered(), "agent.gap")), 60, "the agent.gap",
                 pipeline.diagnose)  # fmt: skip
        later = tagged / "later"
        later.mkdir()
        for n in range(100):
            (later / f"new{n:03d}.csv").write_text(f"{n}\n")

        def creates_after() -> int:
            return sum(1 for e in by_action(pipeline.delivered(), "file.create")
                       if str(e.get("file.path", "")).startswith(f"{later}/"))

        wait_for(lambda: creates_after() == 100, 60, "the files made after recovery", pipeline.diagnose)
        assert agent.terminate() == 0
        wait_for(lambda: bool(by_action(pipeline.delivered(), "agent.stop")), 30, "agent.stop",
                 pipeline.diagnose)  # fmt: skip
        agent_id = pipeline.agent_id()
    events = pipeline.delivered()
    assert_exactly_once(events, agent_id)
    gaps = by_action(events, "agent.gap")
    reported = sum(int(g["exfilguard.gap.lost"]) for g in gaps)
    produced = int(by_action(events, "agent.stop")[0]["exfilguard.count"])
    assert len(events) - len(gaps) + reported == produced, "every event is stored or in a gap, exactly"
    first = {str(e["file.path"]) for e in by_action(events, "file.create")
             if str(e.get("file.path", "")).startswith(f"{tagged}/cust")}
    assert made - len(first) <= reported, "a created file without its event is counted lost"
    assert creates_after() == 100


@pytest.mark.root
def test_full_store_disk_keeps_events_spooled_and_loses_nothing_once_space_returns(
    pipeline: Pipeline,
) -> None:
    produced = 3_000
    with tiny_disk(pipeline.collector_dir / "disk", "6m") as disk:
        pipeline.store_path = disk / "collector.db"
        pipeline.store = str(pipeline.store_path)
        pipeline.write_collector_config()
        pipeline.start_collector()
        filler = fill(disk)
        pipeline.start_agent(test_events=produced)
        wait_for(lambda: spooled(pipeline) == produced + 1, 30, "events spooled", pipeline.diagnose)
        # The collector cannot store: it must not acknowledge, and the agent keeps everything.
        wait_for(lambda: "could not store" in pipeline.agent.log_text() if pipeline.agent else False, 30,
                 "the agent to see the refusal", pipeline.diagnose)  # fmt: skip
        assert pipeline.spool_rows() + pipeline.delivered_count() >= produced + 1
        assert pipeline.collector is not None and pipeline.collector.alive
        filler.unlink()
        wait_for(lambda: all_tests_stored(pipeline, produced) and pipeline.spool_rows() == 0, 60,
                 "every event once space returned", pipeline.diagnose)  # fmt: skip
        events = pipeline.delivered()
    assert_exactly_once(events, pipeline.agent_id())
    assert not by_action(events, "agent.gap")


def test_kill9_loops_of_agent_and_collector_lose_and_duplicate_nothing(pipeline: Pipeline) -> None:
    produced = 6_000
    pipeline.start_collector()
    pipeline.start_agent(test_events=produced)
    # The agent is killed only once its events are durable: what sits in memory a few
    # milliseconds before its commit is the one thing a kill -9 may take without a count.
    wait_for(lambda: spooled(pipeline) == produced + 1, 60, "events spooled", pipeline.diagnose)
    for round_ in range(2):
        stored = pipeline.delivered_count()
        wait_for(lambda stored=stored: pipeline.delivered_count() > stored, 30, "progress",  # type: ignore[misc]
                 pipeline.diagnose)  # fmt: skip
        assert pipeline.collector is not None and pipeline.agent is not None
        if round_ % 2 == 0:
            pipeline.collector.kill9()
            pipeline.agent.kill9()
            pipeline.start_collector()
            pipeline.start_agent()
        else:
            pipeline.agent.kill9()
            pipeline.start_agent()
            pipeline.collector.kill9()
            pipeline.start_collector()
    wait_for(lambda: all_tests_stored(pipeline, produced), 90, f"all {produced} events", pipeline.diagnose)
    # the last agent's own agent.start may still be on its way after the test events it resent
    wait_for(lambda: len(by_action(pipeline.delivered(), "agent.start")) >= 3, 30, "the third agent.start",
             pipeline.diagnose)  # fmt: skip
    events = pipeline.delivered()
    assert_exactly_once(events, pipeline.agent_id())
    assert len(by_action(events, "agent.start")) == 3
    assert not by_action(events, "agent.gap")


def test_a_stopped_collector_holds_the_agent_back_and_the_stream_resumes(pipeline: Pipeline) -> None:
    produced = 10_000
    collector = pipeline.start_collector()
    agent = pipeline.start_agent(test_events=produced)
    wait_for(lambda: 0 < pipeline.delivered_count() < produced // 2, 60, "the stream under way",
             pipeline.diagnose)  # fmt: skip
    assert collector.proc is not None and agent.proc is not None
    collector.proc.send_signal(signal.SIGSTOP)
    try:
        # stopped, not only signalled: on a busy machine a collector inside a write (a batch's
        # commit) finishes it first, and that batch landed within the window measured below
        stopping = psutil.Process(collector.proc.pid)
        wait_for(lambda: stopping.status() == psutil.STATUS_STOPPED, 30, "the collector stopped")
        cpu = psutil.Process(agent.proc.pid)
        wait_for(lambda: spooled(pipeline) == produced + 1, 30, "events spooled", pipeline.diagnose)
        before, stalled = sum(cpu.cpu_times()[:2]), pipeline.delivered_count()
        time.sleep(1.0)  # a measuring window, not a wait for an event
        busy = sum(cpu.cpu_times()[:2]) - before
        assert pipeline.delivered_count() == stalled
    finally:
        collector.proc.send_signal(signal.SIGCONT)
    assert busy < 0.5, f"the agent spun while the collector was stopped ({busy:.2f}s CPU)"
    wait_for(lambda: all_tests_stored(pipeline, produced), 90, f"all {produced} events", pipeline.diagnose)
    assert_exactly_once(pipeline.delivered(), pipeline.agent_id())


def test_postgresql_restart_mid_stream_loses_and_duplicates_nothing(
    pipeline: Pipeline, pg_cluster: PgCluster, pg_url: str
) -> None:
    produced = 20_000
    pipeline.store = pg_url
    pipeline.write_collector_config()
    pipeline.start_collector()
    pipeline.start_agent(test_events=produced)
    # any count short of the whole stream is mid-stream: each look opens a store, and on a busy
    # machine a narrower window passed between two looks
    wait_for(lambda: 0 < pipeline.delivered_count() < produced, 60, "the stream under way",
             pipeline.diagnose)  # fmt: skip
    # fsync is off in the test cluster: a fast (clean) restart keeps what it committed, as a
    # `systemctl restart postgresql` does.
    pg_cluster.restart()
    # A collector that lost its database may exit; systemd restarts it (Restart=), so does this test.
    wait_for(lambda: all_tests_stored(pipeline, produced) or not _collector_alive(pipeline), 90,
             "the stream to finish or the collector to exit", pipeline.diagnose)  # fmt: skip
    if not _collector_alive(pipeline):
        pipeline.start_collector()
    wait_for(lambda: all_tests_stored(pipeline, produced), 90, f"all {produced} events", pipeline.diagnose)
    events = pipeline.delivered()
    assert_exactly_once(events, pipeline.agent_id())
    assert not by_action(events, "agent.gap")


def _collector_alive(pipe: Pipeline) -> bool:
    return pipe.collector is not None and pipe.collector.alive
