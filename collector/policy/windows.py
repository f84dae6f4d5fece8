"""Window state of aggregate and sequence policies: one group per `by` value, bounded in memory.

Bounds (documented in docs/policies.md too):
  - time: a group whose newest event is older than the window (or sequence span) is dropped by
    `expire(now)`; the engine sweeps every few thousand events. Entries inside a group slide out
    as newer events arrive. No window may exceed 90 days (parse.MAX_DURATION_SECONDS).
  - groups: at most `Limits.max_groups` per policy; beyond that the least recently updated group
    is evicted (and counted in `evicted`).
  - per group: at most `Limits.max_entries` events (oldest dropped first: every count threshold
    at or below the cap still fires), `Limits.max_evidence` event ids, and `Limits.max_paths`
    distinct source paths under coverage.
Time is event time (@timestamp, epoch seconds), so replays and rebuilds after a restart behave
exactly like live evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.policy.fields import reader
from collector.policy.model import Aggregate, Coverage, Sequence
from common import units

GroupKey = tuple[Any, ...]

# Fields an earlier sequence step lends the alert when the last step lacks them (device, file).
CONTEXT_FIELDS = (
    "device.serial",
    "device.vendor",
    "device.model",
    "device.bus",
    "file.path",
    "file.size",
    "exfilguard.source.path",
    "exfilguard.mount.point",
    "process.name",
    "process.command_line",
    "tags",
)


@dataclass(frozen=True)
class Limits:
    """Caps on window memory; see the module docstring."""

    max_groups: int = 100_000
    max_entries: int = 10_000
    max_evidence: int = 50
    max_paths: int = 100_000


@dataclass
class Firing:
    """A window reached its threshold: what the alert is built from."""

    key: GroupKey
    event: Mapping[str, Any]
    count: int
    evidence: list[str]
    measures: dict[str, Any]
    first: float
    last: float


class _Groups:
    """Groups in least-recently-updated order, capped; the base of every window kind.

    A plain dict keeps insertion order at half the memory of an OrderedDict: a touched group
    is moved to the end by re-inserting it.
    """

    def __init__(self, span: float, limits: Limits) -> None:
        self.span = span
        self.limits = limits
        self.groups: dict[GroupKey, Any] = {}
        self.evicted = 0

    def touch(self, key: GroupKey, new: Callable[[], Any]) -> Any:
        groups = self.groups
        state = groups.pop(key, None)
        if state is None:
            state = new()
            if len(groups) >= self.limits.max_groups:
                del groups[next(iter(groups))]
                self.evicted += 1
        groups[key] = state
        return state

    def expire(self, now: float) -> int:
        """Drop groups with nothing newer than the span; returns how many were dropped."""
        cutoff = now - self.span
        dropped = 0
        while self.groups:
            key = next(iter(self.groups))
            if self.groups[key].last >= cutoff:
                break  # update order is (nearly) time order: the rest is newer
            del self.groups[key]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self.groups)

    def keys(self) -> Iterator[GroupKey]:
        """Open group keys, oldest first."""
        return iter(self.groups)


class _Tally:
    """One group of a count/distinct/sum aggregate: the events inside the window.

    Entries live in a list read from `head` (cheaper than a deque for the usual one or two
    entries); the dead prefix is cut off once it is half the list.
    """

    __slots__ = ("distinct", "entries", "head", "last", "total")

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, float, Any]] = []  # (time, event id, amount, value)
        self.head = 0
        self.total = 0.0
        self.distinct: dict[Any, int] | None = None
        self.last = 0.0

    def __len__(self) -> int:
        return len(self.entries) - self.head

    def live(self) -> list[tuple[float, str, float, Any]]:
        """The entries inside the window, oldest first."""
        return self.entries[self.head :]


class AggregateWindow(_Groups):
    """Sliding count / distinct / sum windows of one aggregate policy."""

    def __init__(self, aggregate: Aggregate, limits: Limits) -> None:
        super().__init__(aggregate.window, limits)
        self.aggregate = aggregate
        self.sum_field = next((m.field for m in aggregate.measures if m.kind == "sum"), None)
        self.distinct_field = next((m.field for m in aggregate.measures if m.kind == "distinct"), None)
        self._thresholds = tuple((m.kind, m.threshold, m.op == "gte") for m in aggregate.measures)
        self._sum = reader(self.sum_field) if self.sum_field else None
        self._distinct = reader(self.distinct_field) if self.distinct_field else None

    def add(self, key: GroupKey, now: float, event_id: str, event: Mapping[str, Any]) -> Firing | None:
        """Count one matching event into its group; a Firing when a threshold is reached (group resets)."""
        amount = 0.0
        if self._sum is not None:
            raw = self._sum(event)
            amount = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0.0
        value = None
        if self._distinct is not None:
            value = self._distinct(event)
            if type(value) is not str and isinstance(value, (list, dict)):  # a scalar is its own key
                value = group_value(value)
        return self.count(key, now, event_id, event, amount, value)

    def count(  # noqa: PLR0917 - called positionally per event by generated code (keywords cost)
        self, key: GroupKey, now: float, event_id: str, event: Mapping[str, Any], amount: float, value: Any
    ) -> Firing | None:
        """`add` given the event's `amount` (of the sum field, 0.0 without one) and `value` (of the
        distinct field, hashable; None without one), as a policy's generated function reads them."""
        # The hot path of every aggregate: plain locals, no helper calls.
        groups = self.groups
        tally: _Tally | None = groups.pop(key, None)
        if tally is None:
            tally = _Tally()
            if len(groups) >= self.limits.max_groups:
                del groups[next(iter(groups))]
                self.evicted += 1
        groups[key] = tally
        entries = tally.entries
        entries.append((now, event_id, amount, value))
        if amount:
            tally.total += amount
        if value is not None:
            seen = tally.distinct
            if seen is None:
                seen = tally.distinct = {}
            seen[value] = seen.get(value, 0) + 1
        if now > tally.last:  # noqa: PLR1730 - max() costs a call per event
            tally.last = now
        cutoff = now - self.span
        cap = self.limits.max_entries
        head, size = tally.head, len(entries)
        if entries[head][0] < cutoff or size - head > cap:  # the oldest slide out (inline: a call each)
            seen = tally.distinct
            while head < size and (entries[head][0] < cutoff or size - head > cap):
                _, _, old_amount, old_value = entries[head]
                head += 1
                tally.total -= old_amount
                if old_value is not None and seen is not None:
                    left = seen[old_value] - 1
                    if left:
                        seen[old_value] = left
                    else:
                        del seen[old_value]
            if head > 32 and head * 2 > size:  # the dead prefix is cut off once it is half the list
                del entries[:head]
                head, size = 0, len(entries)
            tally.head = head
        count = size - head
        distinct = len(tally.distinct) if tally.distinct else 0
        reached = False
        for kind, threshold, inclusive in self._thresholds:
            got = count if kind == "count" else distinct if kind == "distinct" else tally.total
            if got > threshold or (inclusive and got >= threshold):
                reached = True
                break
        if not reached:
            return None
        entries = tally.live()
        measures: dict[str, Any] = {"window": units.human_duration(self.span)}
        if self.sum_field:
            measures["bytes"] = units.human_bytes(tally.total)
            measures["sum"] = tally.total
        if self.distinct_field:
            measures["distinct"] = distinct
        firing = Firing(
            key=key,
            event=event,
            count=len(entries),
            evidence=[e[1] for e in entries[-self.limits.max_evidence :]],
            measures=measures,
            first=entries[0][0],
            last=entries[-1][0],
        )
        del self.groups[key]  # start counting afresh; repeats fold in suppression
        return firing


@dataclass(slots=True)
class _Collection:
    """One group of a coverage aggregate: source paths of one tag copied in the window."""

    paths: dict[str, tuple[float, float, str]] = field(default_factory=dict)  # path -> time, size, id
    last: float = 0.0


@dataclass(frozen=True)
class Inventory:
    """An agent's latest count of a tag: files and bytes under it."""

    files: int
    bytes: int


def _copied(event: Mapping[str, Any], cov: Coverage, path: str, size: float) -> list[tuple[str, float]]:
    """The tagged files one copy event carries: an archive names each member's source
    (`exfilguard.copy.sources`, sizes from `exfilguard.copy.members`), so a tar of the whole
    collection covers all of it; any other copy is its one source path."""
    sources = event.get("exfilguard.copy.sources")
    if cov.path_field != "exfilguard.source.path" or not isinstance(sources, list) or len(sources) < 2:
        return [(path, size)]
    members = event.get("exfilguard.copy.members")
    sizes = {str(m.get("source")): float(m.get("size") or 0) for m in members or [] if isinstance(m, Mapping)}
    if not sizes:
        # no listing (an encrypted stream tied by lineage): the tagged bytes its pipeline read, on
        # its first source, or the officer read "7 of 7 files, 0 B"
        read = event.get("exfilguard.copy.bytes_read")
        whole = float(read) if isinstance(read, int | float) and read > 0 else size
        return [(str(one), whole if i == 0 else 0.0) for i, one in enumerate(sources)]
    return [(str(one), sizes.get(str(one), 0.0)) for one in sources]


class CoverageWindow(_Groups):
    """Share of a tag's collection (from the agent's inventory) copied within the window."""

    def __init__(self, aggregate: Aggregate, limits: Limits) -> None:
        super().__init__(aggregate.window, limits)
        assert aggregate.coverage is not None
        self.coverage: Coverage = aggregate.coverage

    def add(
        self,
        key: GroupKey,
        now: float,
        event_id: str,
        event: Mapping[str, Any],
        inventory: Callable[[str], Inventory | None],
    ) -> list[Firing]:
        """Record the copied source under each of its tags; Firings for collections now covered."""
        cov = self.coverage
        tags = event.get(cov.tag_field) or []
        tags = [tags] if isinstance(tags, str) else tags
        path = event.get(cov.path_field) or event.get("file.path")
        if not path:
            return []
        raw_size = event.get(cov.size_field)
        size = float(raw_size) if isinstance(raw_size, (int, float)) else 0.0
        copied = _copied(event, cov, str(path), size)
        out = []
        for tag in tags:
            if cov.tags is not None and tag not in cov.tags:
                continue
            group_key = (*key, tag)
            group: _Collection = self.touch(group_key, _Collection)
            for one, one_size in copied:
                group.paths.pop(one, None)  # re-copying a file refreshes it, never counts twice
                group.paths[one] = (now, one_size, event_id)
            group.last = max(group.last, now)
            cutoff = now - self.span
            while group.paths and (
                next(iter(group.paths.values()))[0] < cutoff or len(group.paths) > self.limits.max_paths
            ):
                del group.paths[next(iter(group.paths))]
            known = inventory(str(tag))
            if known is None or known.files < cov.min_files:
                continue  # without the agent's count "the whole collection" cannot be judged
            copied_files = len(group.paths)
            copied_bytes = sum(v[1] for v in group.paths.values())
            share = (
                copied_files / known.files
                if cov.of == "files"
                else (copied_bytes / known.bytes if known.bytes else 0.0)
            )
            share = min(share, 1.0)
            if not (share > cov.threshold or (cov.op == "gte" and share >= cov.threshold - 1e-9)):
                continue
            values = list(group.paths.values())
            out.append(
                Firing(
                    key=group_key,
                    event=event,
                    count=copied_files,
                    evidence=[v[2] for v in values[-self.limits.max_evidence :]],
                    measures={
                        "coverage": f"{share:.0%}",
                        "coverage_share": round(share, 4),
                        "tag": tag,
                        "inventory_files": known.files,
                        "inventory_bytes": known.bytes,
                        "bytes": units.human_bytes(copied_bytes),
                        "sum": copied_bytes,
                        "window": units.human_duration(self.span),
                    },
                    first=values[0][0],
                    last=values[-1][0],
                )
            )
            del self.groups[group_key]
        if len(out) > 1:
            # One tree often carries several tags (database, crown-jewels): one copy, one alert.
            first = out[0]
            first.measures["tag"] = ", ".join(str(f.measures["tag"]) for f in out)
            first.evidence = list(dict.fromkeys(e for f in out for e in f.evidence))[
                -self.limits.max_evidence :
            ]
            out = [first]
        return out


class _Progress:
    """One group of a sequence: how far it got, since when, on which events."""

    __slots__ = ("context", "evidence", "last", "next_step", "start", "steps")

    def __init__(self) -> None:
        self.context: dict[str, Any] = {}  # alert fields seen in earlier steps (the attached device...)
        self.next_step = 0
        self.start = 0.0
        self.last = 0.0
        self.evidence: list[str] = []
        self.steps: list[str] = []


class SequenceWindow(_Groups):
    """Ordered steps per group within a span from the first step."""

    def __init__(self, sequence: Sequence, limits: Limits) -> None:
        super().__init__(sequence.within, limits)
        self.sequence = sequence

    def add(
        self, key: GroupKey, now: float, event_id: str, event: Mapping[str, Any], matched: frozenset[int]
    ) -> Firing | None:
        """Advance the group with an event matching the steps in `matched`; a Firing when all are done."""
        steps = self.sequence.steps
        progress: _Progress | None = self.groups.get(key)
        if progress is not None and now - progress.start > self.span:
            del self.groups[key]
            progress = None
        if progress is not None and progress.next_step in matched:
            self.groups[key] = self.groups.pop(key)  # most recently updated last
        elif 0 in matched and (progress is None or progress.next_step <= 1):
            # A fresh first step restarts the clock: the later start gives the rest more time.
            progress = self.touch(key, _Progress)
            progress.next_step, progress.start, progress.evidence, progress.steps = 0, now, [], []
            progress.context = {}
        else:
            return None
        assert progress is not None
        if len(progress.evidence) < self.limits.max_evidence:
            progress.evidence.append(event_id)
        progress.steps.append(steps[progress.next_step].name)
        progress.next_step += 1
        progress.last = now
        if progress.next_step < len(steps):
            for name in CONTEXT_FIELDS:
                if event.get(name) not in (None, "", []):
                    progress.context[name] = event[name]
            return None
        del self.groups[key]
        return Firing(
            key=key,
            event={**progress.context, **{k: v for k, v in event.items() if v not in (None, "", [])}},
            count=len(steps),
            evidence=progress.evidence,
            measures={"steps": " -> ".join(progress.steps), "window": units.human_duration(self.span)},
            first=progress.start,
            last=now,
        )


def group_value(value: Any) -> Any:
    """A field's value as a part of a group key or a distinct count: a list as a tuple, a mapping
    as None (it names no group)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return None
    return value
