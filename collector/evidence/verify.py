"""Offline verification of an export against its signed manifest and the collector's public key.

Checks, in one streaming pass: the manifest signature, the export's SHA-256, every record's
chain link (prev + record -> hash), the order of records (agent blocks in manifest order,
sequences increasing), the `previous_sequence` pointers (so a deleted row is named by its
sequence even in a filtered export), continuity of the chain for agents the manifest marks
contiguous, and each agent's counts, first/last sequence, prev and head against the manifest.
For CSV it also checks that every ECS cell shows the value the hashed record holds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from collector.evidence import formats, manifest
from collector.evidence.errors import ManifestError
from collector.evidence.keys import PublicKey
from protos import chain

MAX_LINE = 16 << 20  # no event is this large; refuse to buffer more than this per record
_MAX_PROBLEMS = 1000
_MAX_PENDING = 10_000


_ECS_KEYS = {"agent_id": "agent.id", "event_id": "event.id"}  # the ids as events name them


@dataclass(frozen=True)
class Problem:
    """One verification failure; `line` is the 1-based line in the export when a record is named."""

    kind: str  # signature, file_hash, malformed, altered, missing, out_of_order, unexpected, count
    detail: str
    line: int | None = None
    agent_id: str | None = None
    sequence: int | None = None
    event_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.agent_id is not None:
            where.append(f"agent {self.agent_id}")
        if self.sequence is not None:
            where.append(f"sequence {self.sequence}")
        if self.event_id:
            where.append(f"event {self.event_id}")
        prefix = f"{self.kind} ({', '.join(where)})" if where else self.kind
        return f"{prefix}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form for `verify --json`: the fields in this order, ids named as ECS names them."""
        return {_ECS_KEYS.get(k, k): v for k, v in asdict(self).items()}


@dataclass
class Report:
    """The outcome: ok only when the signature, the file hash and every record check out."""

    rows: int = 0
    signer_fingerprint: str = ""
    key_trusted: bool = False
    problems: list[Problem] = field(default_factory=list)
    problems_dropped: int = 0

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    @property
    def first(self) -> Problem | None:
        """The first problem: record problems by line first, then whole-file ones."""
        return self.problems[0] if self.problems else None


@dataclass
class _Agent:
    entry: dict[str, Any]
    rows: int = 0
    last_sequence: int = 0
    last_hash: str = ""
    last_line: int = 0


class _Checker:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.report = Report()
        self.agents: dict[str, _Agent] = {}
        agents = doc.get("agents", [])
        # A manifest is checked by its signature, not trusted for its shape: a wrong type here is a
        # manifest that names no agents (every record is then reported), never a crash.
        for entry in agents if isinstance(agents, list) else []:
            if isinstance(entry, dict):
                self.agents[str(entry.get("agent.id"))] = _Agent(entry)
        self.order = list(self.agents)
        self.current: str | None = None
        self.finished: set[str] = set()
        # (agent, sequence) the next record said should precede it, but was not there: missing,
        # unless it turns up later (then it was moved: out of order).
        self.pending: dict[tuple[str, int], Problem] = {}
        self.record_problems: list[Problem] = []

    def add(self, problem: Problem) -> None:
        if len(self.record_problems) < _MAX_PROBLEMS:
            self.record_problems.append(problem)
        else:
            self.report.problems_dropped += 1

    def record(  # noqa: PLR0917 (one caller, hot loop)
        self, line: int, canonical: bytes, body: dict[str, Any], prev: str, hash_: str, prev_seq: Any
    ) -> None:
        self.report.rows += 1
        agent_id = str(body.get(formats.AGENT, ""))
        event_id = str(body.get(formats.EVENT_ID, "")) or None
        try:
            sequence = int(body.get(formats.SEQUENCE, 0))
            previous_sequence = int(prev_seq)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
            self.add(Problem("malformed", "sequence is not a number", line, agent_id, None, event_id))
            return

        def problem(kind: str, detail: str, seq: int | None = sequence, at: int = line) -> Problem:
            return Problem(kind, detail, at, agent_id, seq, event_id if seq == sequence else None)

        try:
            expected = hashlib.sha256(bytes.fromhex(prev) + hashlib.sha256(canonical).digest()).hexdigest()
        except ValueError:
            expected = ""
        if expected != hash_.lower():
            self.add(problem("altered", "record does not match its chain value (content or hash changed)"))

        state = self.agents.get(agent_id)
        if state is None:
            self.add(problem("unexpected", "agent is not in the manifest"))
            return
        if agent_id != self.current:
            if agent_id in self.finished:
                self.add(problem("out_of_order", "record is outside its agent's block of records"))
            if self.current is not None:
                self.finished.add(self.current)
            self.current = agent_id

        if state.rows and sequence <= state.last_sequence:
            moved = self.pending.pop((agent_id, sequence), None)
            if moved is not None:
                self.add(
                    Problem(
                        "out_of_order",
                        f"sequence {sequence} belongs before line {moved.line} but is at line {line}",
                        moved.line,
                        agent_id,
                        sequence,
                        event_id,
                    )
                )
            else:
                kind = "duplicate" if sequence == state.last_sequence else "out_of_order"
                self.add(problem(kind, f"sequence {sequence} comes after sequence {state.last_sequence}"))
            return

        if state.rows == 0:
            first = _int(state.entry.get("first_sequence"))
            if sequence != first:
                if sequence > first:
                    self._pending(
                        agent_id, first, line, f"first exported record (sequence {first}) is missing"
                    )
                else:
                    self.add(problem("unexpected", f"manifest says the agent's first sequence is {first}"))
            elif prev != state.entry.get("prev"):
                self.add(problem("altered", "chain value before the first record differs from the manifest"))
        elif previous_sequence > state.last_sequence:
            self._pending(
                agent_id,
                previous_sequence,
                line,
                f"sequence {previous_sequence} (between {state.last_sequence} and {sequence}) is missing",
            )
        elif previous_sequence < state.last_sequence:
            self.add(
                problem(
                    "unexpected",
                    f"record follows sequence {state.last_sequence}, not {previous_sequence}",
                )
            )
        elif state.entry.get("contiguous") and prev != state.last_hash:
            self.add(
                Problem(
                    "altered",
                    f"chain broken: sequence {sequence} does not link to the record before it",
                    state.last_line,
                    agent_id,
                    state.last_sequence,
                )
            )
        state.rows += 1
        state.last_sequence = sequence
        state.last_hash = hash_.lower()
        state.last_line = line

    def _pending(self, agent_id: str, sequence: int, line: int, detail: str) -> None:
        problem = Problem("missing", detail, line, agent_id, sequence)
        if len(self.pending) < _MAX_PENDING:
            self.pending[(agent_id, sequence)] = problem
        else:
            self.add(problem)

    def finish(self, line: int) -> None:
        for problem in self.pending.values():
            self.add(problem)
        for agent_id in self.order:
            state = self.agents[agent_id]
            entry = state.entry
            rows, last = _int(entry.get("rows")), _int(entry.get("last_sequence"))
            if state.rows == 0 and rows:
                self.add(Problem("missing", f"all {rows} records of the agent are missing", line, agent_id))
                continue
            if state.last_sequence < last:
                self.add(Problem("missing", "last exported record is missing", line, agent_id, last))
            elif state.last_sequence > last:
                self.add(Problem("unexpected", f"manifest ends the agent at sequence {last}", line, agent_id))
            elif state.last_hash != entry.get("head"):
                self.add(
                    Problem(
                        "altered", "chain head differs from the manifest", state.last_line, agent_id, last
                    )
                )
            if state.rows != rows:
                self.add(Problem("count", f"{state.rows} records, manifest says {rows}", line, agent_id))
        if self.report.rows != _int(self.doc.get("rows")):
            self.add(Problem("count", f"{self.report.rows} records, manifest says {self.doc.get('rows')}"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) else -1


def verify(
    export_path: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str] | None = None,
    public_key: PublicKey | None = None,
) -> Report:
    """Verify an export; raises ManifestError / OSError only when the files cannot be read."""
    export_path = Path(export_path)
    manifest_path = Path(manifest_path or manifest.path_for(export_path))
    doc = manifest.load(manifest_path)
    checker = _Checker(doc)
    report = checker.report
    head: list[Problem] = []
    embedded = manifest.embedded_key(doc)
    key = public_key or embedded
    report.key_trusted = public_key is not None
    if key is None:
        head.append(Problem("signature", "manifest names no usable signer key and none was given"))
    else:
        report.signer_fingerprint = key.fingerprint()
        if not manifest.signature_valid(doc, key):
            head.append(
                Problem(
                    "signature",
                    "manifest signature is invalid: the manifest was edited or signed by another key",
                )
            )
    export = doc.get("export", {})
    fmt = export.get("format") if isinstance(export, dict) else None
    if fmt not in ("csv", "jsonl"):
        raise ManifestError(str(manifest_path), f"unknown export format {fmt!r}")
    digest = hashlib.sha256()
    with export_path.open("rb") as handle:
        lines = _lines(handle, digest)
        last_line = _check_csv(lines, checker) if fmt == "csv" else _check_jsonl(lines, checker)
    checker.finish(last_line + 1)
    tail = []
    if digest.hexdigest() != export.get("sha256"):
        tail.append(Problem("file_hash", "export's SHA-256 differs from the manifest: the file was changed"))
    checker.record_problems.sort(key=lambda p: (p.line is None, p.line or 0))
    report.problems = head + checker.record_problems + tail
    return report


def _lines(handle: BinaryIO, digest: Any) -> Iterator[str]:
    while True:
        raw = handle.readline(MAX_LINE)
        if not raw:
            return
        digest.update(raw)
        # A flipped byte may break UTF-8; replacement characters then fail the hash check.
        yield raw.decode("utf-8", errors="replace")


def _check_jsonl(lines: Iterator[str], checker: _Checker) -> int:
    number = 0
    strip = formats.NOT_HASHED
    for number, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:  # also a 5000-digit number, or [[[[... nested deep
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            checker.add(Problem("malformed", f"not JSON ({reason}): the line was altered", number))
            continue
        if not isinstance(obj, dict):
            checker.add(Problem("malformed", "not a JSON object", number))
            continue
        prev = obj.get(formats.PREV, "")
        hash_ = obj.get(formats.HASH, "")
        prev_seq = obj.get(formats.PREVIOUS_SEQUENCE)
        body = {k: v for k, v in obj.items() if k not in strip}
        if not isinstance(prev, str) or not isinstance(hash_, str):
            checker.add(Problem("malformed", "chain values missing", number))
            continue
        canonical = chain.canonical(body)
        checker.record(number, canonical, body, prev, hash_, prev_seq)
    return number


def _check_csv(lines: Iterator[str], checker: _Checker) -> int:
    csv.field_size_limit(MAX_LINE)
    reader = csv.reader(lines, formats.CsvDialect)
    try:
        header = next(reader)
    except StopIteration:
        return 0
    except csv.Error as exc:
        checker.add(Problem("malformed", f"CSV header unreadable: {exc}", 1))
        return 1
    index = {name: i for i, name in enumerate(header)}
    needed = (formats.RECORD, formats.PREV, formats.HASH, formats.PREVIOUS_SEQUENCE)
    if any(name not in index for name in needed) or len(index) != len(header):
        checker.add(Problem("malformed", "CSV header altered: chain columns missing or duplicated", 1))
        return 1
    rec_i, prev_i, hash_i, seq_i = (index[n] for n in needed)
    shown = [(i, name) for i, name in enumerate(header) if name not in formats.NOT_HASHED]
    while True:
        # A row may span lines (a newline inside a quoted cell): problems name the line it starts on.
        number = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            checker.add(Problem("malformed", f"CSV syntax broken ({exc}): the line was altered", number))
            continue
        if len(row) != len(header):
            checker.add(Problem("malformed", f"{len(row)} cells, header has {len(header)}", number))
            continue
        try:
            body = json.loads(row[rec_i])
        except (ValueError, RecursionError):  # JSONDecodeError, a 5000-digit number, deep nesting
            checker.add(Problem("altered", "record column is not JSON", number))
            continue
        if not isinstance(body, dict):
            checker.add(Problem("altered", "record column is not a JSON object", number))
            continue
        for i, name in shown:
            cell = formats.display(body[name]) if name in body else ""
            if row[i] != cell:
                checker.add(
                    Problem(
                        "altered",
                        f"column {name} shows {row[i]!r} but the signed record holds {cell!r}",
                        number,
                        str(body.get(formats.AGENT, "")),
                        _seq(body),
                        str(body.get(formats.EVENT_ID, "")) or None,
                    )
                )
                break
        checker.record(number, row[rec_i].encode(), body, row[prev_i], row[hash_i], row[seq_i])
    return reader.line_num


def _seq(body: dict[str, Any]) -> int | None:
    value = body.get(formats.SEQUENCE)
    return value if isinstance(value, int) else None
