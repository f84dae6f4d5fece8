"""Export + verify on chained mappings: each kind of tampering fails verify and names the record."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from collector.evidence import formats, keys, manifest, verify
from collector.evidence.export import Format
from collector.evidence.keys import SigningKey
from tests.evidence.helpers import chained, lines, rewrite, write

FORMATS: list[Format] = ["csv", "jsonl"]


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return keys.load_or_create(tmp_path / "state")


def _export(tmp_path: Path, fmt: Format, key: SigningKey) -> Path:
    path = tmp_path / f"out.{fmt}"
    write(chained("agent-a", 6) + chained("agent-b", 4), path, fmt, key)
    return path


def _header(fmt: Format) -> int:
    return 1 if fmt == "csv" else 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_untouched_export_verifies(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    report = verify.verify(path, public_key=key.public)
    assert report.ok, [str(p) for p in report.problems]
    assert report.rows == 10
    assert report.key_trusted


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_byte_names_the_record(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    content = lines(path)
    target = _header(fmt) + 3  # agent-a sequence 4
    line = bytearray(content[target])
    at = line.index(b"customers-4") + 2
    line[at] ^= 0x01  # 's' -> 'r'
    content[target] = bytes(line)
    rewrite(path, content)
    report = verify.verify(path, public_key=key.public)
    assert not report.ok
    first = report.first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence, first.line) == ("altered", "agent-a", 4, target + 1)
    assert any(p.kind == "file_hash" for p in report.problems)


@pytest.mark.parametrize("fmt", FORMATS)
def test_deleted_row_is_named(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    content = lines(path)
    del content[_header(fmt) + 2]  # agent-a sequence 3
    rewrite(path, content)
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence) == ("missing", "agent-a", 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_deleted_last_row_is_named(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    rewrite(path, lines(path)[:-1])  # agent-b sequence 4
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence) == ("missing", "agent-b", 4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reordered_rows_are_named(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    content = lines(path)
    i = _header(fmt) + 1  # swap sequences 2 and 3 of agent-a
    content[i], content[i + 1] = content[i + 1], content[i]
    rewrite(path, content)
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence, first.line) == ("out_of_order", "agent-a", 2, i + 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_moved_across_agents_are_named(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    content = lines(path)
    moved = content.pop(_header(fmt))  # agent-a sequence 1 to the very end
    rewrite(path, [*content, moved])
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.agent_id, first.sequence, first.line) == (
        "out_of_order",
        "agent-a",
        1,
        1 + _header(fmt),
    )
    assert "belongs before" in first.detail


@pytest.mark.parametrize("fmt", FORMATS)
def test_edited_manifest_fails_signature(tmp_path: Path, fmt: Format, key: SigningKey) -> None:
    path = _export(tmp_path, fmt, key)
    mpath = manifest.path_for(path)
    doc = json.loads(mpath.read_text())
    doc["filter"] = {"user": "bob"}  # a harmless-looking edit
    mpath.write_text(json.dumps(doc))
    report = verify.verify(path, public_key=key.public)
    assert [p.kind for p in report.problems] == ["signature"]


def test_manifest_resigned_with_another_key_fails_against_the_trusted_key(
    tmp_path: Path, key: SigningKey
) -> None:
    path = _export(tmp_path, "jsonl", key)
    mpath = manifest.path_for(path)
    doc = json.loads(mpath.read_text())
    doc["rows"] = 9
    forger = keys.load_or_create(tmp_path / "forger")
    forged = manifest.sign(doc, forger)
    mpath.write_text(json.dumps(forged))
    assert verify.verify(path).first is not None  # embedded key: signature fine, but rows wrong
    trusted = verify.verify(path, public_key=key.public)
    assert trusted.first is not None and trusted.first.kind == "signature"


def test_chain_rewrite_of_one_record_is_caught_by_its_successor(tmp_path: Path, key: SigningKey) -> None:
    """A tamperer who recomputes an edited record's own hash still breaks the link to the next one."""
    records = chained("agent-a", 5)
    path = tmp_path / "out.jsonl"
    write(records, path, "jsonl", key)
    content = lines(path)
    obj = json.loads(content[1])
    obj["file.path"] = "/media/usb/harmless.txt"
    body = {k: v for k, v in obj.items() if k not in formats.NOT_HASHED}
    from protos import chain

    obj[formats.HASH] = chain.link(bytes.fromhex(obj[formats.PREV]), body).hex()
    content[1] = (json.dumps(obj) + "\n").encode()
    rewrite(path, content)
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.sequence) == ("altered", 2)


def test_csv_neutralises_formula_and_keeps_the_value_verifiable(tmp_path: Path, key: SigningKey) -> None:
    path = _export(tmp_path, "csv", key)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    header = rows[0]
    row = rows[3]  # agent-a sequence 3 has file.path "=cmd()"
    assert row[header.index("file.path")] == "'=cmd()"
    assert json.loads(row[header.index(formats.RECORD)])["file.path"] == "=cmd()"
    for r in rows[1:]:
        for cell in r:
            assert not cell or cell[0] not in formats.FORMULA_TRIGGERS
    assert verify.verify(path, public_key=key.public).ok


def test_csv_edited_display_cell_is_named(tmp_path: Path, key: SigningKey) -> None:
    path = _export(tmp_path, "csv", key)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows[2][rows[0].index("user.name")] = "mallory"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue())
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.sequence, first.line) == ("altered", 2, 3)
    assert "user.name" in first.detail


def test_filtered_export_verifies_and_names_a_deleted_row(tmp_path: Path, key: SigningKey) -> None:
    """A filter leaves holes in the chain: each record's own link and the pointers still hold."""
    records = [r for r in chained("agent-a", 12) if r["event.sequence"] % 3 != 0]
    path = tmp_path / "filtered.jsonl"
    doc = write(records, path, "jsonl", key)
    assert doc["agents"][0]["contiguous"] is False
    assert verify.verify(path, public_key=key.public).ok
    content = lines(path)
    del content[3]  # sequence 5
    rewrite(path, content)
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.sequence) == ("missing", 5)


def test_without_public_key_the_embedded_key_is_reported_untrusted(tmp_path: Path, key: SigningKey) -> None:
    path = _export(tmp_path, "jsonl", key)
    report = verify.verify(path)
    assert report.ok
    assert not report.key_trusted
    assert report.signer_fingerprint == key.public.fingerprint()
