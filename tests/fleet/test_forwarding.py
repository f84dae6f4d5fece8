"""Two real collectors on one PostgreSQL, both configured to forward to one HTTP receiver: one of
them forwards at a time, each stored event arrives once; killed (-9), the other takes over from
the shared cursors and nothing is lost (only the batch in flight may arrive twice)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.fleet.harness import Fleet
from tests.siem.receivers import HttpReceiver

pytestmark = pytest.mark.slow

BATCH = 50
LEADS = "forward siem: this collector forwards it now"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str, receiver: HttpReceiver) -> Iterator[Fleet]:
    forward = f"[{{name: siem, type: elasticsearch, url: '{receiver.url}', batch_size: {BATCH}}}]"
    two = Fleet(tmp_path, pg_url, 2, forward=forward)
    yield two
    two.close()


def _forwarded(receiver: HttpReceiver) -> Counter[str]:
    return Counter(line["create"]["_id"] for r in receiver.accepted for line in r.lines()[::2])


def _stored_ids(fleet: Fleet) -> set[str]:
    return {str(e["event.id"]) for e in fleet.stored()}


def test_one_collector_forwards_and_the_other_takes_over_when_it_dies(
    fleet: Fleet, receiver: HttpReceiver
) -> None:
    for index in (0, 1):
        fleet.start_collector(index)
    fleet.start_agent("a0", test_events=400, order=[0, 1])  # events stored through both collectors
    fleet.start_agent("a1", test_events=400, order=[1, 0])
    wait_for(lambda: fleet.stored_count() >= 800, 60, "800 events stored", fleet.diagnose)
    wait_for(lambda: set(_forwarded(receiver)) >= _stored_ids(fleet), 60, "all forwarded", fleet.diagnose)
    sent = _forwarded(receiver)
    assert all(n == 1 for n in sent.values()), "the normal case: each event exactly once"
    leaders = [i for i in (0, 1) if LEADS in fleet.collector(i).log_text()]
    assert len(leaders) == 1, fleet.diagnose()
    leader, standby = leaders[0], 1 - leaders[0]

    fleet.start_agent("a2", test_events=2_000, order=[standby, leader])
    wait_for(lambda: sum(_forwarded(receiver).values()) > 1_000, 60, "forwarding under way", fleet.diagnose)
    fleet.collector(leader).kill9()  # mid-stream: a batch may be in flight
    wait_for(lambda: fleet.stored_count() >= 2_800, 60, "2,800 events stored", fleet.diagnose)
    wait_for(lambda: LEADS in fleet.collector(standby).log_text(), 30, "the take-over", fleet.diagnose)
    wait_for(lambda: set(_forwarded(receiver)) >= _stored_ids(fleet), 60, "all forwarded", fleet.diagnose)
    sent = _forwarded(receiver)
    assert set(sent) == _stored_ids(fleet)  # nothing lost, nothing made up
    duplicates = sum(n - 1 for n in sent.values())
    assert duplicates <= BATCH, f"{duplicates} sent twice: more than the batch in flight"
    print(f"{len(sent)} events forwarded, {duplicates} of them twice (the batch in flight at the kill)")
