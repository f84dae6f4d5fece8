"""`exfilguard alerts` list / show / close / reopen as a process, on both real stores, and what
closing an alert means for `exfilguard prune`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.console.queries import evidence_events
from collector.store import Store, open_store, triage
from protos import exfilguard_pb2 as pb
from tests.helpers import make_event, run_cli

NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=400)


@pytest.fixture(params=["sqlite", "postgresql"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Store, list[str]]]:
    """A collector.yaml, its store with 10 old events of one agent, and two alerts citing some of them."""
    if request.param == "sqlite":
        location = str(tmp_path / "collector.db")
    else:
        location = str(request.getfixturevalue("pg_url"))
    yield from _stored(tmp_path, location)


@pytest.fixture
def stored_sqlite(tmp_path: Path) -> Iterator[tuple[Path, Store, list[str]]]:
    """As `stored`, on SQLite only (for what the CLI checks before it touches a store)."""
    yield from _stored(tmp_path, str(tmp_path / "collector.db"))


def _stored(tmp_path: Path, location: str) -> Iterator[tuple[Path, Store, list[str]]]:
    config = tmp_path / "collector.yaml"
    config.write_text(f"store: '{location}'\nstate_dir: {tmp_path / 'state'}\n")
    store = open_store(location)
    events: list[pb.Event] = []
    for seq in range(1, 11):
        event = make_event("ws-1", seq)
        event.timestamp.FromDatetime(OLD + dt.timedelta(seconds=seq))
        events.append(event)
    store.ingest("ws-1", events)
    ids = [e.event.id for e in events]
    store.add_alert(
        {
            "id": "al-copy",
            "@timestamp": "2026-11-22T08:00:00.000000Z",
            "policy.id": "usb-copy-database",
            "severity": "critical",
            "summary": "alice copied customers.csv to EG-0001",
            "agent.id": "ws-1",
            "user.name": "alice",
            "device.serial": "EG-0001",
            "exfilguard.risk.score": 42.5,
            "evidence": [ids[3], ids[4], "pruned-long-ago"],
        }
    )
    store.add_alert(
        {
            "id": "al-device",
            "@timestamp": "2026-11-22T08:01:00.000000Z",
            "policy.id": "usb-unknown-device",
            "severity": "medium",
            "summary": "unapproved device",
            "evidence": [ids[6]],
        }
    )
    yield config, store, ids
    store.close()


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = run_cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_close_show_reopen_and_filters(stored: tuple[Path, Store, list[str]]) -> None:
    config, store, ids = stored
    c = ("--config", str(config))
    note = "HR confirmed: approved transfer"
    out = _ok("alerts", "close", "al-copy", "--note", note, *c, env={"SUDO_USER": "carol"})
    assert "al-copy: open -> closed" in out and "by carol" in out
    table = _ok("alerts", *c).splitlines()
    assert table[0].split()[:5] == ["ID", "TIME", "SEVERITY", "RISK", "STATUS"]
    assert [line.split()[4:6] for line in table[1:]] == [["42", "closed"], ["-", "open"]]  # TIME: two words
    assert [a["id"] for a in json.loads(_ok("alerts", *c, "--json", "--status", "open"))] == ["al-device"]
    chosen = json.loads(
        _ok("alerts", *c, "--json", "--severity", "critical", "--policy", "usb-copy-database")
    )
    assert [(a["id"], a["status"]) for a in chosen] == [("al-copy", "closed")]

    _ok("alerts", "reopen", "al-copy", "--note", "second copy seen", "--by", "dave", *c)
    _ok(
        "alerts", "close", "al-copy", "--status", "false_positive", "--note", "test stick", "--by", "dave", *c
    )
    shown = json.loads(_ok("alerts", "show", "al-copy", "--json", *c))
    assert shown["alert"]["status"] == "false_positive"
    assert [(h["by"], h["from"], h["to"]) for h in shown["history"]] == [
        ("carol", "open", "closed"),
        ("dave", "closed", "open"),
        ("dave", "open", "false_positive"),
    ]
    assert [e["event.id"] for e in shown["evidence"]] == [ids[3], ids[4]]
    assert shown["evidence_missing"] == ["pruned-long-ago"]
    text = _ok("alerts", "show", "al-copy", *c)
    assert "HR confirmed: approved transfer" in text and "Triage history (3)" in text
    assert "pruned-long-ago  (no longer stored" in text and "/srv/db/table-5.csv" in text
    assert store.alert("al-copy") is not None


def test_unknown_ids_and_bad_input_change_nothing(stored_sqlite: tuple[Path, Store, list[str]]) -> None:
    config, store, _ = stored_sqlite
    c = ("--config", str(config))
    done = run_cli("alerts", "close", "al-copy", "no-such-alert", "--note", "done", *c)
    assert done.returncode == 3
    assert "no such alert: no-such-alert" in done.stderr
    done = run_cli("alerts", "show", "no-such-alert", *c)
    assert done.returncode == 3 and "no-such-alert" in done.stderr
    assert run_cli("alerts", "close", "al-copy", *c).returncode == 2  # --note is required
    too_long = "x" * (triage.MAX_NOTE_CHARS + 1)
    done = run_cli("alerts", "close", "al-copy", "--note", too_long, *c)
    assert done.returncode == 2 and "note" in done.stderr
    assert run_cli("alerts", "--status", "maybe", *c).returncode == 2
    assert [a["status"] for a in store.alerts()] == ["open", "open"]
    assert store.alert_history("al-copy") == []


def test_missing_store_is_an_error_not_a_new_store(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(f"store: {tmp_path / 'absent.db'}\n")
    done = run_cli("alerts", "close", "al-1", "--note", "x", "--config", str(config))
    assert done.returncode == 1 and "no such store" in done.stderr
    assert not (tmp_path / "absent.db").exists()


def test_prune_keeps_evidence_of_open_alerts_and_releases_it_when_closed(
    stored: tuple[Path, Store, list[str]],
) -> None:
    config, store, ids = stored
    c = ("--config", str(config))

    def remaining() -> list[int]:
        return [int(m["event.sequence"]) for m in store.events()]

    report = json.loads(_ok("prune", *c, "--older-than", "30d", "--json"))
    assert report["held_by_alerts"] == ["ws-1"]
    assert remaining() == [4, 5, 6, 7, 8, 9, 10]  # al-copy cites sequence 4: it and what follows stay
    _ok(
        "alerts",
        "close",
        "al-copy",
        "--status",
        "resolved",
        "--note",
        "case 42 exported",
        "--by",
        "carol",
        *c,
    )
    _ok("prune", *c, "--older-than", "30d")
    assert remaining() == [7, 8, 9, 10]  # al-device, still open, holds sequence 7
    shown = json.loads(_ok("alerts", "show", "al-copy", "--json", *c))
    assert shown["evidence"] == [] and shown["evidence_missing"] == [ids[3], ids[4], "pruned-long-ago"]


def test_evidence_of_several_agents_is_found_and_ordered(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "collector.db"))
    store.ingest("ws-1", [make_event("ws-1", s) for s in (1, 2, 3)])
    store.ingest("ws-2", [make_event("ws-2", s) for s in (1, 2)])
    by_agent = {(m["agent.id"], m["event.sequence"]): m["event.id"] for m in store.events()}
    cited = [by_agent["ws-2", 2], by_agent["ws-1", 3], "gone", by_agent["ws-1", 1]]
    alert = {"id": "al-1", "agent.id": "ws-1", "evidence": cited}
    events, missing = evidence_events(store, alert)
    assert [(e["agent.id"], e["event.sequence"]) for e in events] == [("ws-1", 1), ("ws-1", 3), ("ws-2", 2)]
    assert missing == ["gone"]
    assert evidence_events(store, {"id": "al-2", "evidence": "not a list"}) == ([], [])
    store.close()
