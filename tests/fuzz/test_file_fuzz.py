"""Brief fuzz runs in CI for the file inputs: policy files, agent.yaml, collector.yaml, exports and
manifests (the same checks `python -m bench.fuzz` runs at length). Derandomised, so CI is
repeatable; the long run explores. Each test takes a few seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz import configs, exports, kinds, policy_files
from tests.fuzz.files import Tally

BRIEF = settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _clean(tally: Tally) -> None:
    assert tally.problems == 0, "\n".join(tally.samples)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def export_target(workdir: Path) -> exports.Target:
    return exports.Target(workdir / "export")


def test_policy_files(workdir: Path) -> None:
    tally = Tally()

    @BRIEF
    @given(policy_files.inputs)
    def one(data: bytes) -> None:
        policy_files.check(data, tally, workdir)
        _clean(tally)

    one()
    assert tally.refused and tally.accepted  # the generator reaches both outcomes


@pytest.mark.parametrize("role", [configs.AGENT, configs.COLLECTOR], ids=lambda r: r.name)
def test_config_files(workdir: Path, role: configs.Role) -> None:
    tally = Tally()

    @BRIEF
    @given(role.inputs)
    def one(data: bytes) -> None:
        role.check(data, tally, workdir)
        _clean(tally)

    one()
    assert tally.refused and tally.accepted


def test_exports_and_manifests(export_target: exports.Target) -> None:
    tally = Tally()

    @BRIEF
    @given(exports.cases)
    def one(case: tuple[str, object]) -> None:
        export_target.check(case, tally)
        _clean(tally)

    one()
    assert tally.refused and tally.accepted


@pytest.mark.parametrize("kind", ["policy", "agent-config", "collector-config", "export"])
def test_the_long_run_kinds_are_registered_and_report_their_figures(tmp_path: Path, kind: str) -> None:
    figures = kinds.runner(kind)(0.5, tmp_path / "kind")
    assert figures["inputs"] > 0
    assert figures["crashes"] == figures["hangs"] == 0, figures["samples"]
