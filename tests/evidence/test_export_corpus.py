"""Exports of a corpus that sets every field in every shape: the bytes the format defines, and they verify."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from collector.evidence import export, formats, keys, verify
from protos import chain, events
from tests.eventcorpus import corpus
from tests.evidence.helpers import write

REPO = Path(__file__).resolve().parents[2]
LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _records() -> list[dict[str, Any]]:
    heads: dict[str, bytes] = {}
    out = []
    for n, event in enumerate(corpus(900, seed=5)):
        event.agent.id, event.event.sequence = f"agent-{n % 3}", n // 3 + 1
        mapping = events.to_mapping(event)
        prev = heads.get(event.agent.id, chain.GENESIS)
        heads[event.agent.id] = value = chain.link(prev, mapping)
        out.append({**mapping, formats.PREV: prev.hex(), formats.HASH: value.hex()})
    return sorted(out, key=lambda m: (m["agent.id"], m["event.sequence"]))


def _defined(records: list[dict[str, Any]], fmt: str) -> bytes:
    """The export as the format defines it, cell by cell (formats.display of every value)."""
    out = io.StringIO()
    writer = csv.writer(out, formats.CsvDialect)
    if fmt == "csv":
        writer.writerow(formats.CSV_HEADER)
    previous: dict[str, int] = {}
    for mapping in records:
        body = {k: v for k, v in mapping.items() if k not in formats.NOT_HASHED}
        agent, sequence = body["agent.id"], body["event.sequence"]
        bookkeeping = [mapping[formats.PREV], mapping[formats.HASH], previous.get(agent, 0)]
        previous[agent] = sequence
        if fmt == "csv":
            cells = [formats.display(body[c]) if c in body else "" for c in formats.ECS_COLUMNS]
            writer.writerow([*cells, *bookkeeping, chain.canonical_text(body)])
        else:
            out.write(LINE({**body, **dict(zip(formats.BOOKKEEPING, bookkeeping, strict=True))}) + "\n")
    return out.getvalue().encode()


def _export_matches(tmp_path: Path, fmt: export.Format, child: bool) -> None:
    """Export the corpus in `fmt` (through the CSV child if `child`): the defined bytes, verified."""
    key = keys.load_or_create(tmp_path / "state")
    records = _records()
    expected = _defined(records, fmt)
    path = tmp_path / f"out-{child}.{fmt}"
    write([dict(r) for r in records], path, fmt, key, csv_child=child)
    assert path.read_bytes() == expected, (fmt, child)
    report = verify.verify(path, public_key=key.public)
    assert report.ok, [str(p) for p in report.problems[:3]]


def test_corpus_exports_are_the_defined_bytes_and_verify(tmp_path: Path) -> None:
    for fmt in export.FORMATS:
        _export_matches(tmp_path / fmt, fmt, child=False)


def test_corpus_csv_through_the_child_is_the_same_bytes(tmp_path: Path) -> None:
    # In a fresh interpreter: the child is forked only from a process of one thread, and this
    # test process may still hold threads other tests left running.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from collector.evidence import csvchild\n"
        "from tests.evidence.test_export_corpus import _export_matches\n"
        "assert csvchild.can_fork(), 'a process of one thread can fork the CSV child'\n"
        "_export_matches(Path(sys.argv[1]), 'csv', child=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
