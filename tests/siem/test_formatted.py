"""Formatting for forwarding with helper processes: the same JSON, in the same order, as formatting
in the forward process, also when a helper dies mid-way (real spawned processes)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from collector import formats
from collector.forward import formatted
from collector.forward.formatted import FIELDS, Formatter, Laid, Row
from collector.store.rows import stored_mapping, stored_mappings
from protos import exfilguard_pb2 as pb
from protos.events import INVALID, to_mapping
from tests.eventcorpus import corpus
from tests.helpers import make_event, wait_for

ROWS: list[Row] = [
    (f"agent-{n % 3}", n, event.SerializeToString())
    for n, event in enumerate([make_event("agent-x", s) for s in range(1, 301)] + corpus(200), start=1)
]


def expected(fmt: str) -> Laid:
    mappings = [to_mapping(pb.Event.FromString(data)) for _, _, data in ROWS]
    assert FIELDS == ("event.id", "@timestamp", "host.name")
    return Laid(
        [m.get("event.id", "") for m in mappings],
        [m.get("@timestamp") for m in mappings],
        [m.get("host.name") for m in mappings],
        ([formats.event_json(fmt, m) for m in mappings],),
    )


@pytest.fixture
def helped(monkeypatch: pytest.MonkeyPatch) -> Iterator[Formatter]:
    monkeypatch.setattr(formatted, "HELPER_NICE", 0)  # a loaded test machine still lets it work
    formatter = Formatter("test", helpers=1)
    formatter.start()
    yield formatter
    formatter.close()


def _helper_pids(formatter: Formatter) -> list[int]:
    return [helper.process.pid or 0 for helper in formatter._started or []]


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
def test_helpers_give_the_same_json_in_the_same_order(helped: Formatter, fmt: str) -> None:
    wait_for(lambda: bool(_helper_pids(helped)), what="the helper started")
    want = expected(fmt)
    assert Formatter("test").get(ROWS, fmt) == want

    def helper_gave_some() -> bool:
        assert helped.get(ROWS, fmt) == want  # whoever laid out which chunk
        return helped.helped > 0

    wait_for(helper_gave_some, what="the helper laid out some of a batch")


def test_a_helper_that_dies_costs_nothing_but_time(helped: Formatter) -> None:
    wait_for(lambda: bool(_helper_pids(helped)), what="the helper started")
    for pid in _helper_pids(helped):
        os.kill(pid, signal.SIGKILL)
    want = expected("ecs")

    def without_helpers() -> bool:
        assert helped.get(ROWS, "ecs") == want  # the broken pool's chunks formatted here
        return helped._started is None

    wait_for(without_helpers, what="the dead helper noticed")
    assert helped.get(ROWS, "ecs") == want  # and the next batches, without helpers for now
    assert helped._started is None


def test_a_helper_without_cpu_does_not_hold_batches_up(helped: Formatter) -> None:
    wait_for(lambda: bool(_helper_pids(helped)), what="the helper started")
    want = expected("ocsf")
    assert helped.get(ROWS, "ocsf") == want  # started, and answering
    (pid,) = _helper_pids(helped)
    os.kill(pid, signal.SIGSTOP)  # as if it got no CPU at all
    try:
        before = helped.helped
        for _ in range(3):  # what it holds is taken back, its answers for it dropped later
            started = time.monotonic()
            assert helped.get(ROWS, "ocsf") == want
            assert time.monotonic() - started < 5.0  # not HELPER_START_SECONDS, not for ever
        assert helped.helped == before
    finally:
        os.kill(pid, signal.SIGCONT)

    def helping_again() -> bool:
        assert helped.get(ROWS, "ocsf") == want  # the late answers dropped, not taken for new chunks
        return helped.helped > before

    wait_for(helping_again, what="the helper helping again")


def test_rows_no_reader_can_take_get_their_defined_form_in_a_batch(caplog: pytest.LogCaptureFixture) -> None:
    bad_time = make_event("agent-x", 1)
    bad_time.timestamp.nanos = 2_000_000_000  # no ISO time: the walk describes it
    bad_gap = make_event("agent-x", 2)
    bad_gap.exfilguard.gap.first.seconds = 10**13  # inside a wide message: set under exfilguard.invalid
    rows: list[Row] = [
        ("agent-x", 1, bad_time.SerializeToString()),
        ("agent-x", 2, bad_gap.SerializeToString()),
        ("agent-x", 3, b"\xff\xff\xff"),  # does not parse
        ("agent-x", 4, make_event("agent-x", 4).SerializeToString()),
    ]
    mappings = stored_mappings("test", rows)
    assert mappings == [stored_mapping("test", *row) for row in rows]
    assert [INVALID in m for m in mappings] == [True, True, True, False]
    warned = [r for r in caplog.records if "cannot be read as it was sent" in r.getMessage()]
    assert len(warned) >= 3  # each bad row logged (twice: here and by the comparison)
    laid = formatted.lay_out("test", rows, ("ecs",))
    assert laid.docs[0] == [formats.event_json("ecs", m) for m in mappings]
