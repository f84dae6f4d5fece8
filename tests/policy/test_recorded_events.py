"""`policy test --events`: recorded events an admin hands in are checked against the event model, so a
wrong type is a located error (line and field), never a traceback from deep in the engine (found by
fuzzing the engine with ill-typed events)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import admin
from collector.policy import conditions, fields
from tests.policy.helpers import event

PACK = Path(__file__).resolve().parents[2] / "policies"


def _replay(tmp_path: Path, lines: list[str], *extra: str) -> int:
    events = tmp_path / "events.jsonl"
    events.write_text("".join(line + "\n" for line in lines))
    return admin.main(["policy", "test", str(PACK), "--events", str(events), *extra])


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ({"agent.id": [{"a": 1}]}, "line 2: agent.id: expected str, not list"),
        ({"event.action": {"a": 1}}, "line 2: event.action: expected str, not dict"),
        ({"file.size": "big"}, "line 2: file.size: expected int, not str"),
        ({"device.removable": 1}, "line 2: device.removable: expected bool, not int"),
        ({"tags": "database"}, "line 2: tags: expected a list"),
        ({"@timestamp": "0001-01-01T00:00:00+14:00"}, "line 2: @timestamp: outside 1970-01-01T00:00:00Z"),
        ({"@timestamp": "yesterday"}, "line 2: @timestamp: not an ISO 8601 time"),
    ],
)
def test_an_ill_typed_field_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, object], said: str
) -> None:
    good = json.dumps(event("file.copy"))
    assert _replay(tmp_path, [good, json.dumps({**event("file.copy"), **bad})]) == 1
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("text", ['{"file.size": ' + "9" * 5000 + "}", "[" * 100_000])
def test_json_python_cannot_read_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert _replay(tmp_path, [text]) == 1
    assert "line 1: not JSON" in capsys.readouterr().err


def test_odd_but_well_typed_events_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        json.dumps(event("agent.inventory", exfilguard__inventory=[{"tag": "database", "files": "x"}])),
        json.dumps(event("device.attach", when="9999-12-31T23:30:00.000000Z", device__serial="S")),
    ]
    assert _replay(tmp_path, lines, "--timezone", "Europe/Berlin") == 0
    assert "2 events" in capsys.readouterr().err


def test_local_time_beyond_year_9999_is_unknown_not_a_crash() -> None:
    assert conditions.local_time("9999-12-31T23:30:00Z", "Europe/Berlin") is None
    assert conditions.local_time("0001-01-01T00:00:00Z", "America/New_York") is None
    assert fields.type_problem("no.such.field", {"anything": 1}) is None
