"""The engine reads a stored event's fields off its protobuf (collector/policy/fields.py) and decides
tests against empty named lists at load: every shipped policy raises the same alerts on stored
events (the policy process's lazy views) as on their mappings, with the site lists empty (as
shipped) and filled (tests/policy/examples/lists.yaml)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from admin.policy import read_events
from collector.policy import loader
from collector.policy.model import PolicySet
from collector.policy.replay import engine_for, replay
from tests.policy.helpers import stored

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "policies"
EXAMPLES = Path(__file__).resolve().parent / "examples"
FILES = sorted(p.name for p in EXAMPLES.glob("*.jsonl"))


def _alerts(pack: PolicySet, events: list[dict[str, Any]], as_stored: bool) -> list[tuple[Any, ...]]:
    engine = engine_for(pack, timezone="Europe/Berlin")
    fed: list[Any] = [stored(e) for e in events] if as_stored else events
    return [
        (
            a.policy_id,
            a.alert["summary"],
            a.alert["count"],
            a.alert["evidence"],
            a.alert.get("exfilguard.alert.repeats"),
        )
        for a in replay(engine, fed)
    ]


@pytest.fixture(scope="module", params=["shipped", "examples"])
def pack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    where = tmp_path_factory.mktemp("pack")
    for path in PACK.glob("*.yaml"):
        shutil.copy(path, where / path.name)
    if request.param == "examples":
        shutil.copy(EXAMPLES / "lists.yaml", where / "lists.yaml")
    return loader.load([where])


@pytest.mark.parametrize("name", FILES)
def test_stored_events_raise_what_their_mappings_raise(pack: PolicySet, name: str) -> None:
    events = list(read_events(EXAMPLES / name))
    by_mapping = _alerts(pack, events, as_stored=False)
    assert _alerts(pack, events, as_stored=True) == by_mapping
