"""An event the real collector refuses (INVALID_ARGUMENT naming it) is set aside with an agent.gap
in its place, and the stream goes on: before, the agent resent that batch for ever and nothing it
produced afterwards ever arrived."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from agent.identity import Identity
from agent.refused import RefusedEvents
from agent.spool import Spool
from agent.transport import Transport
from common.agentconfig import AgentConfig, BatchSettings
from protos import events
from protos import exfilguard_pb2 as pb
from tests.helpers import iter_stored, start_collector, wait_for, write_collector_config

IDENTITY = Identity(agent_id="7d1c1a52-2f43-4c57-9b0e-9f2f1c6f7a11", hostname="ws-refused", machine_id="m")


def _good(spool: Spool, first: int, count: int) -> None:
    for n in range(first, first + count):
        spool.append(events.new_event("agent.test", exfilguard=pb.Extensions(count=n)))


def test_refused_events_are_set_aside_with_a_gap_and_later_events_arrive(tmp_path: Path) -> None:
    config_path = write_collector_config(tmp_path / "collector")
    with start_collector(config_path) as collector:
        agent_dir = tmp_path / "agent"
        config = AgentConfig.model_validate({
            "collector": collector.address, "state_dir": str(agent_dir), "heartbeat_seconds": 0.5,
            "reconnect_max_seconds": 0.5, "batch": BatchSettings(max_events=7, max_delay_ms=20),
        })
        spool = Spool(agent_dir, agent_id=IDENTITY.agent_id, version="1.0", max_events=10_000,
                      max_bytes=64 << 20)
        _good(spool, 1, 10)  # sequences 1..10
        bad_time = events.new_event("file.read", file=pb.File(path="/srv/db/a.csv"))
        bad_time.timestamp.nanos = -1  # refused by the batch check: sequence 11
        spool.append(bad_time)
        _good(spool, 11, 10)  # 12..21
        bad_text = events.new_event("file.read", file=pb.File(path="/srv/db/b\x00.csv"))
        spool.append(bad_text)  # refused by the message parser (NUL): sequence 22
        _good(spool, 21, 10)  # 23..32
        assert spool.flush(5)
        transport = Transport(config, spool, IDENTITY, version="1.0")
        transport.start()
        try:
            wait_for(lambda: spool.acked_sequence == 32, 30, "every sequence acknowledged")
            stored = list(iter_stored(Path(tmp_path / "collector" / "collector.db"), IDENTITY.agent_id))
        finally:
            transport.stop(1)
            spool.close()
        assert [int(e["event.sequence"]) for e in stored] == list(range(1, 33))
        gaps = {int(e["event.sequence"]): e for e in stored if e["event.action"] == "agent.gap"}
        assert sorted(gaps) == [11, 22]
        for gap in gaps.values():
            assert (gap["exfilguard.gap.reason"], gap["exfilguard.gap.lost"]) == ("refused", 1)
            assert "refused with" in gap["event.reason"]
        assert "nanos -1" in gaps[11]["event.reason"]
        assert "NUL" in gaps[22]["event.reason"]
        tests = [int(e["exfilguard.count"]) for e in stored if e["event.action"] == "agent.test"]
        assert tests == list(range(1, 31))  # every good event exactly once, in order
        assert transport.stats.refused == 2
        kept = RefusedEvents(agent_dir)
        assert kept.sequences() == [11, 22]
        record = json.loads((kept.path / f"{11:020d}.json").read_text())
        assert record["collector"] == collector.address and "nanos -1" in record["problem"]
        original = pb.Event.FromString(base64.b64decode(record["bytes_base64"]))
        assert (original.event.sequence, original.timestamp.nanos) == (11, -1)
        assert (kept.path / f"{11:020d}.json").stat().st_mode & 0o777 == 0o600
        assert "stream rejected" in collector.log()


def test_the_kept_copies_are_bounded_oldest_first(tmp_path: Path) -> None:
    kept = RefusedEvents(tmp_path, max_kept=3)
    for sequence in range(1, 6):
        kept.keep(sequence, b"\x01\x02", "127.0.0.1:1", "bad")
    assert kept.sequences() == [3, 4, 5]
    kept.keep(5, b"\x01", "127.0.0.1:1", "again")  # the same event refused again: one file
    assert kept.sequences() == [3, 4, 5]
