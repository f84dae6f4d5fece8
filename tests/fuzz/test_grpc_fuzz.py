"""A brief fuzz of the agent port in CI (`python -m bench.fuzz` runs the same at length).

One collector process for the module (shipped policies, SQLite), a well-behaved agent streaming
beside the fuzzer. Each hypothesis example is one stream of drawn messages; the collector must
answer OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED, in time, and stay up. The last test checks
what the whole run left: log, store, the honest agent's events, an export that verifies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.agent_messages import FuzzStream, raw_streams, seed_streams, structured_streams
from tests.fuzz.grpc_target import GrpcTarget
from tests.helpers import run_cli

# A few seconds in all: the long runs are bench.fuzz's.
BRIEF = settings(
    max_examples=80,
    deadline=None,
    database=None,  # no .hypothesis directory in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcTarget]:
    running = GrpcTarget(tmp_path_factory.mktemp("fuzz-grpc"))
    running.start()
    yield running
    running.close()


def _agent_id() -> str:
    return f"fuzz-{next(_ids) % 10_000:04d}"  # one length for every input (see raw_streams)


@pytest.mark.parametrize("name", sorted(seed_streams("fuzz-seed")))
def test_inputs_that_broke_the_collector_before_are_refused(target: GrpcTarget, name: str) -> None:
    stream = seed_streams(_agent_id())[name]
    outcome = target.send(stream)
    assert not outcome.problems, outcome.problems
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)


@BRIEF
@given(data=st.data())
def test_structured_agent_messages(target: GrpcTarget, data: st.DataObject) -> None:
    stream: FuzzStream = data.draw(structured_streams(_agent_id()))
    outcome = target.send(stream)
    assert not outcome.problems, (outcome.problems, stream)


@BRIEF
@given(data=st.data())
def test_byte_mutated_agent_messages(target: GrpcTarget, data: st.DataObject) -> None:
    stream: FuzzStream = data.draw(raw_streams(_agent_id()))
    outcome = target.send(stream)
    assert not outcome.problems, (outcome.problems, stream)


def test_after_fuzzing_nothing_is_lost_unreadable_or_logged_as_an_error(target: GrpcTarget) -> None:
    figures = target.finish()
    assert figures.inputs >= 100
    assert figures.refused and figures.accepted  # both paths were exercised
    assert figures.clean, figures
    assert figures.honest_events > 0
    # What was stored, fuzzed strings and all, exports and verifies.
    config = target.directory / "collector.yaml"
    pub, out = target.directory / "collector.pub", target.directory / "all.csv"
    assert run_cli("key", "export", "--config", str(config), "--out", str(pub)).returncode == 0
    done = run_cli("export", "--config", str(config), "--format", "csv", "--out", str(out))
    assert done.returncode == 0, done.stderr
    done = run_cli("verify", str(out), "--public-key", str(pub))
    assert done.returncode == 0, done.stdout + done.stderr
