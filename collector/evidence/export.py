"""Export: stream chained events to CSV or JSON Lines in constant memory, hashing as we write.

The exporter re-checks every record's chain link while writing (the same formula `verify`
uses), so a store edited behind the collector's back is reported at export time too; the
record is still exported as stored, because an auditor must see what the store holds.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from collector.evidence import csvchild, formats
from collector.evidence.csvrows import CsvRows
from collector.evidence.errors import ExportError
from collector.evidence.keys import SigningKey
from collector.store.base import EventFilter
from common.ecstime import ecs_time
from protos import chain

if TYPE_CHECKING:
    from collector.store.base import Store
    from collector.store.ledger import Ledger

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")
_FLUSH_BYTES = 1 << 20
_CHUNKS_AHEAD = 4  # chunks handed to the writing thread and not written yet (bounds memory)
_ROWS_PER_CHUNK = 512  # rows joined and handed to the sink at once
_CSV_CHILD_ROWS = 10_000  # CSV exports of at least this many rows (or of a filter that cannot tell) fork
_MAX_BREAKS_KEPT = 100  # the manifest names the first ones; the count is always exact


@dataclass
class AgentRange:
    """What one agent contributed to an export: the chain values at both ends and the sequences."""

    agent_id: str
    rows: int = 0
    first_sequence: int = 0
    last_sequence: int = 0
    prev: str = ""  # chain value before the first exported record (hex)
    head: str = ""  # chain value of the last exported record (hex)
    contiguous: bool = True  # every record linked to the one before it in this export

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: the fields in this order, the agent id as ECS names it."""
        return {"agent.id" if k == "agent_id" else k: v for k, v in asdict(self).items()}


@dataclass
class ExportResult:
    """Counts, ranges and the SHA-256 of what was written."""

    format: Format
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    first_time: str | None = None
    last_time: str | None = None
    agents: list[AgentRange] = field(default_factory=list)
    store_breaks: int = 0
    first_breaks: list[dict[str, Any]] = field(default_factory=list)


class Progress:
    """A one-line progress report on stderr, redrawn at most five times a second."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, rows: int, force: bool = False) -> None:
        """Redraw if enough time has passed (or when forced)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        rate = rows / max(now - self.start, 1e-9)
        if self.total:
            pct = min(100.0, 100.0 * rows / self.total)
            bar = "#" * int(pct / 4)
            text = f"\rexport [{bar:<25}] {pct:5.1f}% {rows}/{self.total} rows {rate:,.0f} rows/s"
        else:
            text = f"\rexport {rows} rows {rate:,.0f} rows/s"
        sys.stderr.write(text)
        sys.stderr.flush()

    def done(self, rows: int) -> None:
        """Final redraw and newline."""
        if self.enabled:
            self.update(rows, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


class _HashingSink:
    """Takes the export's bytes in parts; hashes and writes them in 1 MiB chunks on a thread of its
    own while the next rows are built (hashlib and the file write release the GIL for such sizes,
    so the second core does them)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.bytes = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._chunks: queue.Queue[bytes | None] = queue.Queue(_CHUNKS_AHEAD)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._drain, name="export-writer", daemon=True
        )
        self._thread.start()

    def extend(self, parts: list[bytes]) -> None:
        """Take these parts (the caller may clear the list afterwards)."""
        self._parts += parts
        self._size += sum(map(len, parts))
        if self._size >= _FLUSH_BYTES:
            self._hand_over()

    def finish(self) -> None:
        """Write what is left and wait for the thread; raises what writing raised."""
        self._hand_over()
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Let the thread end once it wrote what it was given (idempotent)."""
        if self._thread is not None:
            self._chunks.put(None)
            self._thread.join()
            self._thread = None

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        self.bytes += len(data)
        self._chunks.put(data)

    def _drain(self) -> None:
        while (data := self._chunks.get()) is not None:
            if self._error is not None:
                continue  # drained, not written: the export fails with that error
            try:
                self.digest.update(data)
                self.out.write(data)
            except BaseException as exc:  # raised in the exporting thread at its next hand-over
                self._error = exc


def write_export(
    records: Iterable[dict[str, Any]],
    out: BinaryIO,
    fmt: Format,
    progress: Progress | None = None,
    *,
    csv_child: bool = False,
) -> ExportResult:
    """Write `records` (stored events' mappings as `to_mapping` makes them, carrying chain hash and
    prev, in agent/sequence order). `csv_child`: a CSV's rows are built and written by a forked
    child (csvchild.py), when `csvchild.can_fork()`; the same bytes."""
    if fmt not in FORMATS:
        raise ExportError("-", f"unknown format {fmt!r}")
    result = ExportResult(format=fmt)
    if csv_child and fmt == "csv" and csvchild.can_fork():
        child = csvchild.CsvChild(out)
        try:
            rows = _write_rows(records, child, result, progress, child)
            child.finish()
        finally:
            child.stop()
        result.bytes, result.sha256 = child.bytes, child.sha256
    else:
        sink = _HashingSink(out)
        try:
            rows = _write_rows(records, sink, result, progress, CsvRows() if fmt == "csv" else None)
            sink.finish()
        finally:
            sink.stop()
        result.bytes, result.sha256 = sink.bytes, sink.digest.hexdigest()
    if progress is not None:
        progress.done(rows)
    result.rows = rows
    return result


class _Sink(Protocol):
    def extend(self, parts: list[bytes]) -> None: ...


class _Rows(Protocol):
    parts: list[bytes]

    def add(
        self, body: dict[str, Any], prev_hex: str, hash_hex: str, previous: int, record: bytes
    ) -> None: ...


def _write_rows(
    records: Iterable[dict[str, Any]],
    sink: _Sink,
    result: ExportResult,
    progress: Progress | None,
    csv_rows: _Rows | None,
) -> int:
    """Check every record and hand its row to `csv_rows` (None: a JSON Lines line) and the parts to
    `sink`; fill `result`'s ranges, breaks and times; the row count."""
    agents: dict[str, AgentRange] = {}
    parts: list[bytes] = csv_rows.parts if csv_rows is not None else []
    sha256 = hashlib.sha256
    fromhex = bytes.fromhex
    canonical_event = chain.canonical_event
    jsonl_line = formats.jsonl_line
    prev_key, hash_key, previous_key = formats.PREV, formats.HASH, formats.PREVIOUS_SEQUENCE
    not_hashed = tuple(formats.NOT_HASHED - {prev_key, hash_key})  # what else a record may carry
    agent_key, sequence_key, time_key = formats.AGENT, formats.SEQUENCE, formats.TIMESTAMP
    current: AgentRange | None = None
    rows = 0
    first_time = last_time = None
    for mapping in records:
        # The source's dicts are ours: take the bookkeeping out in place rather than copy each event.
        body = mapping
        prev_hex = _hex(body.pop(prev_key, None))
        hash_hex = _hex(body.pop(hash_key, None))
        for name in not_hashed:
            if name in body:
                del body[name]
        record_bytes = canonical_event(body)
        agent_id = str(body.get(agent_key, ""))
        sequence = int(body.get(sequence_key, 0))
        if current is None or current.agent_id != agent_id:
            current = agents.get(agent_id)
            if current is None:
                current = AgentRange(agent_id, first_sequence=sequence, prev=prev_hex)
                agents[agent_id] = current
                result.agents.append(current)
        previous_sequence = current.last_sequence if current.rows else 0
        if current.rows and prev_hex != current.head:
            current.contiguous = False
        if sha256(fromhex(prev_hex) + sha256(record_bytes).digest()).hexdigest() != hash_hex:
            result.store_breaks += 1
            if len(result.first_breaks) < _MAX_BREAKS_KEPT:
                result.first_breaks.append({"agent.id": agent_id, "sequence": sequence})
        current.rows += 1
        current.last_sequence = sequence
        current.head = hash_hex
        stamp = body.get(time_key)
        if isinstance(stamp, str):
            if first_time is None or stamp < first_time:
                first_time = stamp
            if last_time is None or stamp > last_time:
                last_time = stamp
        if csv_rows is not None:
            csv_rows.add(body, prev_hex, hash_hex, previous_sequence, record_bytes)
        else:
            body[prev_key] = prev_hex
            body[hash_key] = hash_hex
            body[previous_key] = previous_sequence
            parts += (jsonl_line(body), b"\n")
        rows += 1
        if not rows % _ROWS_PER_CHUNK:
            sink.extend(parts)
            parts.clear()
            if progress is not None:
                progress.update(rows)
    sink.extend(parts)
    result.first_time, result.last_time = first_time, last_time
    return rows


def _hex(value: Any) -> str:
    if type(value) is str and len(value) == 64:  # the stores' form, first
        return value if value.islower() else value.lower()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, str) and len(value) == 64:
        return value.lower()
    if value is None:
        return chain.GENESIS.hex()
    raise ExportError("-", f"chain value {value!r} is neither 32 bytes nor 64 hex digits")


class AtomicFile:
    """Write to FILE.partial and rename on success, so a crash never leaves a plausible export."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        try:
            self.handle: BinaryIO = self.partial.open("wb")
        except OSError as exc:
            raise ExportError(str(self.path), f"cannot write: {exc.strerror}") from exc

    def commit(self) -> None:
        """Flush, fsync and move into place."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.partial.replace(self.path)
        except OSError as exc:
            raise ExportError(str(self.path), f"cannot write: {exc.strerror}") from exc

    def abort(self) -> None:
        """Remove the partial file."""
        self.handle.close()
        self.partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class ExportFilter(EventFilter):
    """What an auditor asked for: the store's event filter, and alerts or policies whose evidence."""

    policies: tuple[str, ...] = ()
    alerts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: only what was set; times as ECS strings."""
        out: dict[str, Any] = {}
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = ecs_time(value)
        for name in ("host", "user", "agent", "action", "device_serial"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.policies:
            out["policy"] = list(self.policies)
        if self.alerts:
            out["alert"] = list(self.alerts)
        return out

    def store_filter(self) -> EventFilter:
        """The part the store filters on."""
        return EventFilter(**{f.name: getattr(self, f.name) for f in fields(EventFilter)})




class StoreSource:
    """Chained events of a filter, each with its `prev` chain value, in (agent, sequence) order.

    Events above a hole are not chained yet and cannot be proven: they are skipped and counted.
    """

    def __init__(self, store: Store, ledger: Ledger, where: ExportFilter) -> None:
        self.store = store
        self.ledger = ledger
        self.where = where
        self.unchained = 0
        self.event_ids: set[str] | None = None
        if where.alerts or where.policies:
            # Bounded by the evidence lists of the matching alerts, not by the store size.
            self.event_ids = ledger.alert_evidence(where.alerts, where.policies)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ids = self.event_ids
        if ids is not None and not ids:
            return
        last_agent: str | None = None
        last_sequence = -1
        last_hash = ""
        for mapping in self.store.events(self.where.store_filter()):
            hash_hex = mapping.get(formats.HASH)
            if not hash_hex:
                self.unchained += 1
                continue
            if ids is not None and mapping.get(formats.EVENT_ID) not in ids:
                continue
            agent_id = str(mapping.get(formats.AGENT, ""))
            sequence = int(mapping.get(formats.SEQUENCE, 0))
            if agent_id == last_agent and sequence == last_sequence + 1:
                prev = last_hash
            else:
                value = self.ledger.chain_value(agent_id, sequence - 1)
                if value is None:
                    raise ExportError("-", f"agent {agent_id}: no chain value before sequence {sequence}")
                prev = value.hex()
            mapping[formats.PREV] = prev
            last_agent, last_sequence, last_hash = agent_id, sequence, str(hash_hex)
            yield mapping


@dataclass
class Exported:
    """A finished export: the result counts and the signed manifest."""

    result: ExportResult
    manifest: dict[str, Any]
    unchained: int


def export_store(  # noqa: PLR0917 (one caller, the CLI)
    store: Store,
    ledger: Ledger,
    where: ExportFilter,
    fmt: Format,
    out_path: str | None,
    manifest_path: str,
    key: SigningKey,
    show_progress: bool = False,
) -> Exported:
    """Export to `out_path` (None: stdout) and write the signed manifest to `manifest_path`."""
    from collector.evidence import manifest as manifests  # manifest imports this module

    source = StoreSource(store, ledger, where)
    total = None
    counted = source.event_ids is None and where == ExportFilter(agent=where.agent)
    if counted and (show_progress or fmt == "csv"):
        total = store.count_events(where.agent)
    # A fork costs milliseconds, and helps only with a core to spare.
    csv_child = fmt == "csv" and (total is None or total >= _CSV_CHILD_ROWS) and csvchild.core_free()
    progress = Progress(total if show_progress else None, show_progress)
    if out_path is None:
        result = write_export(source, sys.stdout.buffer, fmt, progress, csv_child=csv_child)
        sys.stdout.buffer.flush()
        name = "-"
    else:
        target = AtomicFile(out_path)
        try:
            result = write_export(source, target.handle, fmt, progress, csv_child=csv_child)
        except BaseException:
            target.abort()
            raise
        target.commit()
        name = Path(out_path).name
    checkpoints = {a.agent_id: cp.to_dict() for a in result.agents if (cp := ledger.checkpoint(a.agent_id))}
    doc = manifests.build(
        result, name, where.to_dict(), key, checkpoints=checkpoints, unchained=source.unchained
    )
    manifests.write(doc, manifest_path)
    return Exported(result, doc, source.unchained)
