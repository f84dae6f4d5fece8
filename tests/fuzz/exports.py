"""Fuzz kind 'export': hostile event text through export and verify, and mutated exports and manifests.

Two properties, in CSV and JSON Lines:
- an untampered export always verifies, whatever text (CR, LF, quotes, NUL, formula triggers) the
  events carry, and no line of a CSV export starts a spreadsheet formula (`roundtrip_failures`);
- an export or manifest changed in any way verify can see never verifies (`forgeries`), and verify
  answers with a report or a ManifestError naming the manifest, never a crash.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from collector.evidence import formats, keys, manifest, verify
from collector.evidence.errors import EvidenceError, ManifestError
from collector.evidence.export import FORMATS, Format
from collector.evidence.keys import SigningKey
from protos import chain, events
from protos import exfilguard_pb2 as pb
from tests.evidence.helpers import make_event, write
from tests.fuzz.files import NASTY_FRAGMENTS, Tally, drive, hang_limit, mutate, mutations, random_mutations

# A spreadsheet starts reading a cell again after CR, LF or CRLF.
_LINES = re.compile(r"\r\n|\r|\n")
TEXT_FIELDS = ("path", "command_line", "user")

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(tuple("\r\n\",=+-@\t'x\x00 ")), max_size=20),
    st.sampled_from(NASTY_FRAGMENTS[:40]),
)
records = st.lists(st.tuples(texts, texts, texts), min_size=1, max_size=6)


def _chained(rows: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    out = []
    prev = chain.GENESIS
    for seq, (path, command, user) in enumerate(rows, start=1):
        event = make_event("agent-a", seq, path=path or "/p", user=user)
        event.process.command_line = command
        event.process.MergeFrom(pb.Process(pid=seq))
        mapping = events.to_mapping(event)
        value = chain.link(prev, mapping)
        out.append({**mapping, formats.PREV: prev.hex(), formats.HASH: value.hex()})
        prev = value
    return out


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _formula_free(text: str) -> bool:
    _header, _, rows = text.partition("\n")
    for line in _LINES.split(rows):
        cell = line[1:] if line.startswith('"') else line
        if cell and cell[0] in formats.FORMULA_TRIGGERS:
            return False
    return True


class Target:
    """A signing key and, per format, an untampered export to mutate, in one directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key: SigningKey = keys.load_or_create(directory / "state")
        self.base: dict[Format, tuple[bytes, bytes]] = {}
        rows = [("/media/s/a\n=1+1", "python3 -c 'a\r\nb'", "alice"), ("/m/b", "-x", "bob"), ("c", "", "")]
        for fmt in FORMATS:
            path = directory / f"base.{fmt}"
            write(_chained(rows * 3), path, fmt, self.key)
            self.base[fmt] = (path.read_bytes(), manifest.path_for(path).read_bytes())

    def roundtrip(self, rows: list[tuple[str, str, str]], fmt: Format, tally: Tally) -> None:
        """An untampered export of `rows` must verify (and, as CSV, show no formula)."""
        path = self.directory / f"roundtrip.{fmt}"
        try:
            with hang_limit():
                write(_chained(rows), path, fmt, self.key)
                report = verify.verify(path, public_key=self.key.public)
        except Exception as exc:  # every escape is what the fuzzer looks for
            tally.crash(exc, rows)
            return
        if not report.ok:
            tally.found("roundtrip_failures", f"{fmt} {report.first} on {rows!r:.300}")
        elif fmt == "csv" and not _formula_free(path.read_bytes().decode()):
            tally.found("roundtrip_failures", f"csv formula at a line start on {rows!r:.300}")
        else:
            tally.accepted += 1

    def tamper(self, fmt: Format, in_manifest: bool, data: bytes, tally: Tally) -> None:
        """Verify the base export with its export or manifest replaced by `data`."""
        export_bytes, manifest_bytes = self.base[fmt]
        path = self.directory / f"tampered.{fmt}"
        manifest_path = manifest.path_for(path)
        path.write_bytes(export_bytes if in_manifest else data)
        manifest_path.write_bytes(data if in_manifest else manifest_bytes)
        try:
            with hang_limit():
                report = verify.verify(path, public_key=self.key.public)
        except ManifestError as exc:
            tally.refused += 1
            if exc.path != str(manifest_path):
                tally.found("unlocated", f"{exc} on {data!r:.300}")
            return
        except EvidenceError as exc:
            tally.found("unlocated", f"{type(exc).__name__} {exc} on {data!r:.300}")
            return
        except Exception as exc:  # every escape is what the fuzzer looks for
            tally.crash(exc, data)
            return
        same = data == (manifest_bytes if in_manifest else export_bytes)
        if in_manifest and not same:
            try:  # re-spaced or re-ordered: the same claims (1 and true are not the same claim)
                same = _canonical(json.loads(data)) == _canonical(json.loads(manifest_bytes))
            except (ValueError, RecursionError):
                same = False
        if report.ok and not same:
            tally.found("forgeries", f"{fmt} {'manifest' if in_manifest else 'export'} {data!r:.400}")
        elif not report.ok and same:
            tally.found("roundtrip_failures", f"{fmt} unchanged but {report.first}")
        else:
            tally.refused += 0 if same else 1
            tally.accepted += 1 if same else 0

    def check(self, case: tuple[str, Any], tally: Tally) -> None:
        """One drawn case: ('roundtrip', (rows, fmt)), ('tamper', (fmt, in_manifest, edits)) or
        ('retype', (fmt, in_manifest, seed)): a JSON value of the manifest or of a JSONL record replaced."""
        kind, args = case
        if kind == "roundtrip":
            rows, fmt = args
            self.roundtrip(rows, fmt, tally)
            return
        fmt, in_manifest, how = args
        original = self.base[fmt][1 if in_manifest else 0]
        if kind == "retype":
            if not in_manifest and fmt != "jsonl":
                return
            changed = retype(original, random.Random(how), whole=in_manifest)
        else:
            changed = mutate(original, how)
        self.tamper(fmt, in_manifest, changed, tally)


ODD_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 2**63, 10**30, 1.5, float("inf"), "", "x", "0" * 64, [], {}, [1], {"a": 1}, "9" * 5000,
)  # fmt: skip


def retype(data: bytes, rng: random.Random, whole: bool) -> bytes:
    """Replace one value somewhere in a JSON document (`whole`) or in one JSON Lines record."""
    if whole:
        return _retype_json(data, rng)
    lines = data.split(b"\n")
    i = rng.randrange(max(1, len(lines) - 1))
    lines[i] = _retype_json(lines[i], rng)
    return b"\n".join(lines)


def _retype_json(text: bytes, rng: random.Random) -> bytes:
    doc = json.loads(text)
    node = doc
    while True:
        keys: list[Any] = []
        if isinstance(node, dict):
            keys = list(node)
        elif isinstance(node, list):
            keys = list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.6:
            node = child
            continue
        if rng.random() < 0.15 and isinstance(node, dict):
            del node[key]
        else:
            node[key] = rng.choice(ODD_VALUES)
        break
    return json.dumps(doc, separators=(",", ":")).encode()


formats_ = st.sampled_from(FORMATS)
cases = st.one_of(
    st.tuples(st.just("roundtrip"), st.tuples(records, formats_)),
    st.tuples(st.just("tamper"), st.tuples(formats_, st.booleans(), mutations())),
    st.tuples(st.just("retype"), st.tuples(formats_, st.booleans(), st.integers(0, 2**32))),
)


def _random_case(rng: random.Random) -> tuple[str, Any]:
    fmt: Format = rng.choice(FORMATS)
    if rng.random() < 0.3:
        alphabet = "\r\n\",=+-@\t'x\x00 é"
        rows = [
            tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in TEXT_FIELDS)
            for _ in range(rng.randint(1, 5))
        ]
        return "roundtrip", (rows, fmt)
    if rng.random() < 0.3:
        return "retype", (fmt, rng.random() < 0.5, rng.randrange(2**32))
    return "tamper", (fmt, rng.random() < 0.3, random_mutations(rng))


def run(seconds: float, directory: Path) -> dict[str, Any]:
    """bench.fuzz kind 'export'."""
    if directory.exists():
        shutil.rmtree(directory)
    target = Target(directory)

    def one(seed: int, tally: Tally) -> None:
        target.check(_random_case(random.Random(seed)), tally)

    return drive(st.integers(0, 2**64), one, seconds).figures()
