"""The spool: durable, contiguous sequences, delete only on ack, bounded with agent.gap, restart-safe."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gaps import REASON_DISK_FULL, REASON_SEQUENCE_RESET, REASON_SPOOL_FULL, REASON_TOO_LARGE
from agent.spool import Spool
from protos import events
from protos import exfilguard_pb2 as pb


def _spool(tmp_path: Path, **kwargs: int) -> Spool:
    limits = {"max_events": 1000, "max_bytes": 1 << 20} | kwargs
    return Spool(tmp_path, agent_id="agent-1", version="9.9", **limits)


def _decode(rows: list[tuple[int, bytes]]) -> list[pb.Event]:
    return [pb.Event.FromString(blob) for _, blob in rows]


def _test_event(n: int) -> pb.Event:
    return events.new_event("agent.test", exfilguard=pb.Extensions(count=n))


def test_append_assigns_contiguous_sequences_and_agent(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for n in range(5):
        spool.append(_test_event(n))
    assert spool.flush(5)
    rows = spool.unsent(0, 100)
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
    decoded = _decode(rows)
    assert [e.event.sequence for e in decoded] == [1, 2, 3, 4, 5]
    assert [e.exfilguard.count for e in decoded] == [0, 1, 2, 3, 4]
    assert {(e.agent.id, e.agent.version) for e in decoded} == {("agent-1", "9.9")}
    assert spool.backlog() == 5
    assert [seq for seq, _ in spool.unsent(2, 2)] == [3, 4]
    spool.close()


def test_ack_deletes_only_up_to_the_acknowledged_sequence(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for n in range(10):
        spool.append(_test_event(n))
    spool.flush(5)
    assert spool.ack(4) == 4
    assert [seq for seq, _ in spool.unsent(0, 100)] == [5, 6, 7, 8, 9, 10]
    assert spool.ack(3) == 0  # stale ack: nothing more to delete
    assert spool.acked_sequence == 4
    assert spool.backlog() == 6
    spool.close()


def test_ack_beyond_what_was_assigned_keeps_unsent_events(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for n in range(3):
        spool.append(_test_event(n))
    spool.flush(5)
    spool.ack(1000)  # a collector that claims too much must not make us drop events we never sent
    assert spool.acked_sequence == 3
    spool.append(_test_event(9))
    spool.flush(5)
    assert [seq for seq, _ in spool.unsent(0, 10)] == [4]
    spool.close()


def test_rebase_after_a_spool_reset_puts_a_gap_then_the_unsent_events_after_the_collectors(
    tmp_path: Path,
) -> None:
    spool = _spool(tmp_path)
    for n in range(3):
        spool.append(_test_event(n))
    spool.flush(5)
    ids = [e.event.id for e in _decode(spool.unsent(0, 10))]
    with pytest.raises(ValueError, match="below next sequence"):
        spool.rebase(2)  # an ordinary ack, not a reset
    assert spool.rebase(500) == 501
    rows = spool.unsent(500, 10)
    assert [seq for seq, _ in rows] == [501, 502, 503, 504]
    gap, *moved = _decode(rows)
    assert (gap.event.action, gap.exfilguard.gap.reason) == ("agent.gap", REASON_SEQUENCE_RESET)
    assert gap.event.sequence == 501 and gap.agent.id == "agent-1"
    assert "holds its events up to 500" in gap.event.reason and "restarted at sequence 1" in gap.event.reason
    assert [e.event.id for e in moved] == ids  # the same events, renumbered in order
    assert [e.event.sequence for e in moved] == [502, 503, 504]
    assert (spool.acked_sequence, spool.next_sequence, spool.backlog()) == (500, 505, 4)
    spool.append(_test_event(9))
    spool.flush(5)
    spool.close()
    reopened = _spool(tmp_path)  # the renumbering is durable
    assert [seq for seq, _ in reopened.unsent(500, 10)] == [501, 502, 503, 504, 505]
    assert (reopened.acked_sequence, reopened.next_sequence) == (500, 506)
    reopened.close()


def test_sequence_and_unsent_events_survive_restart(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for n in range(6):
        spool.append(_test_event(n))
    spool.flush(5)
    spool.ack(6)  # everything acked: MAX(seq) in the table is gone, the counter must not be
    spool.append(_test_event(6))
    spool.close()
    again = _spool(tmp_path)
    assert again.next_sequence == 8
    assert again.acked_sequence == 6
    assert [seq for seq, _ in again.unsent(0, 10)] == [7]
    again.append(_test_event(7))
    again.flush(5)
    assert [seq for seq, _ in again.unsent(6, 10)] == [7, 8]
    again.close()


def test_concurrent_appends_from_many_threads_get_unique_contiguous_sequences(tmp_path: Path) -> None:
    spool = _spool(tmp_path, max_events=100_000)
    per_thread, threads = 500, 4

    def produce(worker: int) -> None:
        for n in range(per_thread):
            spool.append(_test_event(worker * per_thread + n))

    workers = [threading.Thread(target=produce, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert spool.flush(30)
    rows = spool.unsent(0, 10_000)
    assert [seq for seq, _ in rows] == list(range(1, per_thread * threads + 1))
    assert sorted(e.exfilguard.count for e in _decode(rows)) == list(range(per_thread * threads))
    spool.close()


def test_full_spool_counts_losses_then_records_one_gap_when_room_returns(tmp_path: Path) -> None:
    spool = _spool(tmp_path, max_events=100)
    produced = 250
    for n in range(produced):
        spool.append(_test_event(n))
    spool.flush(5)
    assert spool.backlog() == 100
    assert spool.pending_losses() == {REASON_SPOOL_FULL: 150}
    spool.ack(50)  # room again: the gap must be stored without waiting for another event
    _wait(lambda: not spool.pending_losses())
    rows = _decode(spool.unsent(0, 1000))
    gaps = [e for e in rows if e.event.action == "agent.gap"]
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap.event.sequence == 101
    assert gap.exfilguard.gap.lost == 150
    assert gap.exfilguard.gap.reason == REASON_SPOOL_FULL
    assert "150 events lost" in gap.event.reason
    assert gap.exfilguard.gap.first.ToDatetime() <= gap.exfilguard.gap.last.ToDatetime()
    stored_tests = [e for e in rows if e.event.action == "agent.test"]
    assert 50 + len(stored_tests) + gap.exfilguard.gap.lost == produced
    spool.close()


def test_pending_losses_survive_restart(tmp_path: Path) -> None:
    spool = _spool(tmp_path, max_events=100)
    for n in range(130):
        spool.append(_test_event(n))
    spool.flush(5)
    spool.close()
    again = _spool(tmp_path, max_events=100)
    assert again.pending_losses() == {REASON_SPOOL_FULL: 30}
    again.ack(10)
    _wait(lambda: not again.pending_losses())
    gap = _decode(again.unsent(100, 10))[0]
    assert (gap.event.action, gap.exfilguard.gap.lost) == ("agent.gap", 30)
    again.close()


def test_byte_bound_and_oversized_events(tmp_path: Path) -> None:
    spool = Spool(
        tmp_path, agent_id="a", version="1", max_events=1000, max_bytes=20_000, max_event_bytes=5_000
    )
    big = events.new_event("agent.test", file=pb.File(path="x" * 6_000))
    spool.append(big)
    for _ in range(100):
        spool.append(events.new_event("agent.test", file=pb.File(path="y" * 1_000)))
    spool.flush(5)
    assert spool.stored_bytes() <= 20_000
    stored = _decode(spool.unsent(0, 1000))
    lost = dict(spool.pending_losses())
    for gap in (e for e in stored if e.event.action == "agent.gap"):
        lost[gap.exfilguard.gap.reason] = lost.get(gap.exfilguard.gap.reason, 0) + gap.exfilguard.gap.lost
    assert lost[REASON_TOO_LARGE] == 1
    tests = [e for e in stored if e.event.action == "agent.test"]
    assert len(tests) + lost[REASON_TOO_LARGE] + lost[REASON_SPOOL_FULL] == 101
    spool.close()


def test_spool_file_is_private(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    assert (spool.path.stat().st_mode & 0o777) == 0o600
    spool.close()


def _wait(predicate: object, timeout: float = 5.0) -> None:
    import time

    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.root
def test_disk_full_is_counted_and_reported_as_a_gap_once_space_returns(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs that really runs out of space")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        spool = _spool(disk, max_events=100_000, max_bytes=1 << 30)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # ENOSPC: the disk is full now
            while True:
                os.write(fd, b"x" * 4096)
        os.close(fd)
        for n in range(200):
            spool.append(events.new_event("agent.test", file=pb.File(path="p" * 500),
                                          exfilguard=pb.Extensions(count=n + 1)))
        assert spool.flush(10)
        lost = spool.pending_losses().get(REASON_DISK_FULL, 0)
        assert lost > 0
        filler.unlink()
        spool.append(_test_event(201))
        assert spool.flush(10)
        rows = _decode(spool.unsent(0, 1000))
        gaps = [e for e in rows if e.event.action == "agent.gap"]
        assert [(g.exfilguard.gap.reason, g.exfilguard.gap.lost) for g in gaps] == [(REASON_DISK_FULL, lost)]
        stored = [e for e in rows if e.event.action == "agent.test"]
        assert len(stored) + lost == 201
        assert [e.event.sequence for e in rows] == list(range(1, len(rows) + 1))
        spool.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@contextlib.contextmanager
def _tiny_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` that really runs out of space (root only; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs that really runs out of space")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _accounted(rows: list[pb.Event]) -> int:
    """Distinct test events stored plus the events that stored agent.gap events report lost."""
    numbers = {e.exfilguard.count for e in rows if e.event.action == "agent.test"}
    assert len(numbers) == len([e for e in rows if e.event.action == "agent.test"]), "stored twice"
    return len(numbers) + sum(e.exfilguard.gap.lost for e in rows if e.event.action == "agent.gap")


def _numbered(n: int) -> pb.Event:
    return events.new_event("agent.test", file=pb.File(path="/srv/db/" + "p" * 150),
                            exfilguard=pb.Extensions(count=n))


@pytest.mark.root
def test_a_spool_that_fills_its_own_disk_counts_exactly_then_frees_acked_space_and_recovers(
    tmp_path: Path,
) -> None:
    produced = 25_000  # about twice what a 3 MiB disk holds
    with _tiny_disk(tmp_path, "3m") as disk:
        spool = _spool(disk, max_events=1_000_000, max_bytes=1 << 30)
        for n in range(1, produced + 1):
            spool.append(_numbered(n))
        assert spool.flush(60)
        lost = spool.pending_losses()[REASON_DISK_FULL]
        stored = _decode(spool.unsent(0, produced))
        assert len(stored) == spool.backlog() > 1000
        assert _accounted(stored) + lost == produced, "every event the disk refused is counted, exactly"
        spool.close()  # a stop while the disk is full keeps the count (spool.losses)
        again = _spool(disk, max_events=1_000_000, max_bytes=1 << 30)
        assert again.pending_losses() == {REASON_DISK_FULL: lost}
        # The collector acknowledges everything: deleting it must work on the full disk, the
        # freed space returns to the file system and the gap is stored without new events.
        assert again.ack(again.next_sequence - 1) == len(stored)
        _wait(lambda: not again.pending_losses(), 10)
        for n in range(produced + 1, produced + 1001):
            again.append(_numbered(n))
        assert again.flush(10)
        rows = _decode(again.unsent(0, 10_000))
        assert [(e.event.action, e.exfilguard.gap.reason, e.exfilguard.gap.lost) for e in rows[:1]] == [
            ("agent.gap", REASON_DISK_FULL, lost)]
        assert [e.exfilguard.count for e in rows[1:]] == list(range(produced + 1, produced + 1001))
        assert not again.pending_losses()
        assert (disk / "spool.reserve").stat().st_blocks * 512 >= 64 << 10, "the reserve is held again"
        again.close()
