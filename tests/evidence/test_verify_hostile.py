"""Verify answers hostile exports and manifests with a report or a ManifestError, never a traceback
(each case was found by tests/fuzz/exports.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.evidence import keys, manifest, verify
from collector.evidence.errors import ManifestError
from collector.evidence.keys import SigningKey
from tests.evidence.helpers import chained, write


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return keys.load_or_create(tmp_path / "state")


def _jsonl(tmp_path: Path, key: SigningKey) -> Path:
    path = tmp_path / "out.jsonl"
    write(chained("agent-a", 3), path, "jsonl", key)
    return path


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"event.sequence":2', '"event.sequence":' + "9" * 5000),  # json: beyond int digits
        ('"exfilguard.export.previous_sequence":1', '"exfilguard.export.previous_sequence":Infinity'),
        ('"event.sequence":2', '"event.sequence":' + "[" * 100_000),  # json: nested too deep
    ],
)
def test_a_hostile_record_is_a_named_problem(tmp_path: Path, key: SigningKey, old: str, new: str) -> None:
    path = _jsonl(tmp_path, key)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    report = verify.verify(path, public_key=key.public)
    assert not report.ok
    assert report.first is not None and report.first.kind == "malformed" and report.first.line == 2


@pytest.mark.parametrize("agents", [5, 1.5, "x", {"agent.id": "agent-a"}])
def test_a_manifest_of_the_wrong_shape_fails(tmp_path: Path, key: SigningKey, agents: object) -> None:
    path = _jsonl(tmp_path, key)
    manifest_path = manifest.path_for(path)
    doc = json.loads(manifest_path.read_text())
    doc["agents"] = agents
    manifest_path.write_text(json.dumps(doc))
    report = verify.verify(path, public_key=key.public)
    assert not report.ok
    assert {p.kind for p in report.problems} >= {"signature"}


@pytest.mark.parametrize("text", ['{"rows": ' + "1" * 5000 + "}", "[" * 100_000, "\xff"])
def test_an_unreadable_manifest_is_a_manifest_error(tmp_path: Path, key: SigningKey, text: str) -> None:
    path = _jsonl(tmp_path, key)
    manifest.path_for(path).write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestError) as caught:
        verify.verify(path, public_key=key.public)
    assert caught.value.path == str(manifest.path_for(path))
