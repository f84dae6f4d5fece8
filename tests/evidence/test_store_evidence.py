"""Evidence end to end on both real stores (SQLite, PostgreSQL): ingest, export, verify, SQL edits, prune."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from admin import export as export_cmd
from admin import keys as key_cmd
from admin import retention as prune_cmd
from admin import verify as verify_cmd
from collector import config as collector_config
from collector.evidence import keys, manifest, verify
from collector.store import Store, open_store
from collector.store.ledger import open_ledger
from protos import exfilguard_pb2 as pb
from tests.evidence.helpers import make_event

NOW = dt.datetime.now(dt.UTC)


def cli(*argv: str) -> int:
    """Run our commands through argparse exactly as `exfilguard` registers them."""
    parser = argparse.ArgumentParser(prog="exfilguard")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (export_cmd, verify_cmd, key_cmd, prune_cmd):
        module.register(sub)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


@pytest.fixture(params=["sqlite", "postgresql"])
def collector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    """A collector.yaml and its store, holding two agents' events (alice and bob interleaved)."""
    if request.param == "sqlite":
        location = str(tmp_path / "collector.db")
    else:
        location = str(request.getfixturevalue("pg_url"))  # a new database of the throwaway cluster
    config = tmp_path / "collector.yaml"
    config.write_text(f"store: '{location}'\nstate_dir: {tmp_path / 'state'}\n")
    store = open_store(location)
    for agent in ("agent-a", "agent-b"):
        batch: list[pb.Event] = []
        for seq in range(1, 21):
            # Sequences 1-10 are over a year old, 11-20 from the last hour.
            when = NOW - dt.timedelta(days=400 - seq) if seq <= 10 else NOW - dt.timedelta(minutes=60 - seq)
            user = "alice" if seq % 2 else "bob"
            path = "=cmd()" if seq == 7 else ""
            batch.append(make_event(agent, seq, path=path, user=user, when=when))
        store.ingest(agent, batch)
    yield config, store
    store.close()


def _edit_in_sql(config: Path, agent: str, sequence: int, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite one stored event's protobuf behind the collector's back, as a DBA could."""
    location = collector_config.load(config).store
    if "://" not in location:
        with contextlib.closing(sqlite3.connect(location)) as db, db:
            sql = "SELECT data FROM events WHERE agent_id = ? AND sequence = ?"
            (data,) = db.execute(sql, (agent, sequence)).fetchone()
            db.execute(
                "UPDATE events SET data = ? WHERE agent_id = ? AND sequence = ?",
                (edit(data), agent, sequence),
            )
        return
    with psycopg.connect(location, autocommit=True) as conn:
        sql = "SELECT data FROM events WHERE agent_id = %s AND sequence = %s"
        row = conn.execute(sql, (agent, sequence)).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE events SET data = %s WHERE agent_id = %s AND sequence = %s",
            (edit(row[0]), agent, sequence),
        )


def _ids(store: Store, agent: str, seqs: set[int]) -> list[str]:
    return [
        str(m["event.id"]) for m in store.events() if m["agent.id"] == agent and m["event.sequence"] in seqs
    ]


def _public(tmp_path: Path, config: Path) -> Path:
    pub = tmp_path / "collector.pub"
    assert cli("key", "export", "--config", str(config), "--out", str(pub)) == 0
    return pub


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_full_export_verifies_with_exported_public_key(
    tmp_path: Path, collector: tuple[Path, Store], fmt: str
) -> None:
    config, _ = collector
    out = tmp_path / f"all.{fmt}"
    assert cli("export", "--config", str(config), "--format", fmt, "--out", str(out)) == 0
    doc = manifest.load(manifest.path_for(out))
    assert doc["rows"] == 40
    assert [a["agent.id"] for a in doc["agents"]] == ["agent-a", "agent-b"]
    assert all(
        a["contiguous"] and a["first_sequence"] == 1 and a["last_sequence"] == 20 for a in doc["agents"]
    )
    pub = _public(tmp_path, config)
    assert cli("verify", str(out), "--public-key", str(pub)) == verify_cmd.EXIT_OK
    assert cli("verify", str(out)) == verify_cmd.EXIT_UNTRUSTED_KEY


def test_signing_key_is_private_and_stable(tmp_path: Path, collector: tuple[Path, Store]) -> None:
    config, _ = collector
    first = _public(tmp_path, config).read_bytes()
    key_file = tmp_path / "state" / "evidence" / keys.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert _public(tmp_path, config).read_bytes() == first
    key_file.chmod(0o644)
    assert cli("key", "export", "--config", str(config)) == 2  # refuses a key others can read


def test_user_filter_export_is_not_contiguous_but_verifies(
    tmp_path: Path, collector: tuple[Path, Store]
) -> None:
    config, _ = collector
    out = tmp_path / "alice.jsonl"
    assert (
        cli("export", "--config", str(config), "--format", "jsonl", "--out", str(out), "--user", "alice") == 0
    )
    doc = manifest.load(manifest.path_for(out))
    assert doc["rows"] == 20 and doc["filter"] == {"user": "alice"}
    assert not doc["agents"][0]["contiguous"]
    report = verify.verify(out, public_key=keys.PublicKey.load(_public(tmp_path, config)))
    assert report.ok, [str(p) for p in report.problems]
    # A deleted row in a filtered export is still named by its sequence.
    lines = out.read_bytes().splitlines(keepends=True)
    del lines[4]  # agent-a sequence 9
    out.write_bytes(b"".join(lines))
    first = verify.verify(out).first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence) == ("missing", "agent-a", 9)


def test_alert_and_policy_filters_export_the_cited_events(
    tmp_path: Path, collector: tuple[Path, Store]
) -> None:
    config, store = collector
    cited = _ids(store, "agent-b", {4, 5, 6})
    store.add_alert(
        {"id": "al-1", "@timestamp": "2026-11-22T08:00:00.000000Z", "policy.id": "usb-db", "evidence": cited}
    )
    store.add_alert(
        {"id": "al-2", "@timestamp": "2026-11-22T08:01:00.000000Z", "policy.id": "other", "evidence": []}
    )
    out = tmp_path / "alert.csv"
    assert (
        cli("export", "--config", str(config), "--format", "csv", "--out", str(out), "--alert", "al-1") == 0
    )
    doc = manifest.load(manifest.path_for(out))
    assert doc["rows"] == 3 and doc["agents"][0]["first_sequence"] == 4
    assert verify.verify(out).ok
    out2 = tmp_path / "policy.jsonl"
    assert (
        cli("export", "--config", str(config), "--format", "jsonl", "--out", str(out2), "--policy", "usb-db")
        == 0
    )
    exported = [json.loads(line)["event.id"] for line in out2.read_text().splitlines()]
    assert exported == cited
    assert (
        cli("export", "--config", str(config), "--format", "csv", "--out", str(out), "--alert", "nope") == 2
    )


def test_direct_sql_edit_of_a_stored_event_is_detected(tmp_path: Path, collector: tuple[Path, Store]) -> None:
    config, _ = collector

    def hide(data: bytes) -> bytes:
        event = pb.Event.FromString(data)
        event.file.path = "/media/usb/holiday-photos.jpg"  # hide what was really copied
        return event.SerializeToString()

    _edit_in_sql(config, "agent-a", 12, hide)
    out = tmp_path / "after-edit.csv"
    # The exporter sees the break itself (exit 1) but still exports what the store holds.
    assert (
        cli("export", "--config", str(config), "--format", "csv", "--out", str(out))
        == export_cmd.EXIT_BROKEN_CHAIN
    )
    doc = manifest.load(manifest.path_for(out))
    assert doc["store_chain_breaks"]["first"] == [{"agent.id": "agent-a", "sequence": 12}]
    report = verify.verify(out)
    first = report.first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence) == ("altered", "agent-a", 12)
    assert cli("verify", str(out), "--public-key", str(_public(tmp_path, config))) == verify_cmd.EXIT_FAILED


def test_prune_by_age_keeps_chain_verifiable_and_alerted_events(
    tmp_path: Path, collector: tuple[Path, Store]
) -> None:
    config, store = collector
    store.add_alert(
        {
            "id": "al-open",
            "@timestamp": "2026-11-22T08:00:00.000000Z",
            "policy.id": "usb-db",
            "evidence": _ids(store, "agent-b", {4}),
        }
    )
    age = "30d"
    assert cli("prune", "--config", str(config), "--older-than", age) == 0
    remaining = {(m["agent.id"], m["event.sequence"]) for m in store.events()}
    assert min(s for a, s in remaining if a == "agent-a") == 11  # all old events pruned
    assert min(s for a, s in remaining if a == "agent-b") == 4  # the alert holds sequence 4 and later
    out = tmp_path / "after-prune.jsonl"
    assert cli("export", "--config", str(config), "--format", "jsonl", "--out", str(out)) == 0
    doc = manifest.load(manifest.path_for(out))
    agent_a = doc["agents"][0]
    assert agent_a["first_sequence"] == 11 and agent_a["checkpoint"]["sequence"] == 10
    assert agent_a["prev"] == agent_a["checkpoint"]["chain"]
    assert cli("verify", str(out), "--public-key", str(_public(tmp_path, config))) == 0
    # Told to, it prunes alerted events too; the head always stays.
    assert cli("prune", "--config", str(config), "--older-than", age, "--include-alerted") == 0
    assert min(m["event.sequence"] for m in store.events() if m["agent.id"] == "agent-b") == 11
    assert cli("prune", "--config", str(config), "--older-than", "0d", "--include-alerted") == 0
    assert [m["event.sequence"] for m in store.events()] == [20, 20]
    assert cli("export", "--config", str(config), "--format", "csv", "--out", str(out)) == 0
    assert cli("verify", str(out), "--public-key", str(_public(tmp_path, config))) == 0
    # Ingest continues the chain after a prune.
    store.ingest("agent-a", [make_event("agent-a", 21)])
    assert (
        cli("export", "--config", str(config), "--format", "csv", "--out", str(out), "--agent", "agent-a")
        == 0
    )
    assert verify.verify(out).ok


def test_prune_by_size(tmp_path: Path, collector: tuple[Path, Store]) -> None:
    config, store = collector
    batch = [make_event("agent-c", seq, path="/media/usb/" + "x" * 400) for seq in range(1, 3001)]
    store.ingest("agent-c", batch)
    with open_ledger(collector_config.load(config).store) as ledger:
        used = ledger.used_bytes()
    limit = used // 2
    assert cli("prune", "--config", str(config), "--max-size", str(limit), "--include-alerted") == 0
    assert store.count_events() < 3040
    out = tmp_path / "after-size.jsonl"
    assert cli("export", "--config", str(config), "--format", "jsonl", "--out", str(out)) == 0
    assert verify.verify(out).ok


def test_verify_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli("verify", str(tmp_path / "missing.csv")) == verify_cmd.EXIT_ERROR
    bad = tmp_path / "x.jsonl"
    bad.write_text("{}\n")
    manifest.path_for(bad).write_text("{not json")
    assert cli("verify", str(bad)) == verify_cmd.EXIT_ERROR


def test_stdout_export_needs_a_manifest_path(tmp_path: Path, collector: tuple[Path, Store]) -> None:
    config, _ = collector
    assert cli("export", "--config", str(config), "--format", "csv", "--out", "-") == 2
