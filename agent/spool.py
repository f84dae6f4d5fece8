"""The durable, bounded on-disk spool every event passes through before it is sent.

Events are stored in SQLite (WAL) at `state_dir/spool.db`, keyed by their per-agent
sequence, and deleted only when the collector acknowledges them.

Durability: `synchronous=FULL`. In WAL mode NORMAL survives a process crash but may
roll back the last commits on power loss, and the spec says a power loss loses nothing
that was spooled. FULL costs one fsync per commit; commits are grouped (see below), so
the cost is paid per group, not per event (bench/spool.py measures it).

Grouping: `append` only queues the event (sensors call it from their own threads and
must not wait for a disk). One writer thread takes everything queued, assigns the
sequences and commits it in one transaction; while it fsyncs, the next group builds
up. An event is durable a few milliseconds after `append` returns; `flush()` waits for it.

Bounds: `max_events` / `max_bytes` (and a cap on the in-memory queue). An event that
does not fit is counted as lost (it gets no sequence, so sequences stay contiguous),
and as soon as there is room again an `agent.gap` event is stored carrying the count,
the reason and the first/last timestamps of the lost events. The pending counts are
kept in the database, so even a restart does not make a loss silent. A full disk
(SQLITE_FULL / ENOSPC) is handled the same way with reason `disk_full`.

Full disk: the spool stores events only while it holds its reserve (agent/spool_disk.py), a
preallocated file beside the database. A write that meets a full disk gives the reserve
back, which pays for folding the write-ahead log into the database and for deleting what the
collector acknowledged; freed pages go back to the file system (incremental vacuum) and the
spool takes its reserve again before it stores events again. Meanwhile every event is counted
(reason `disk_full`), and the counts are saved in place in `spool.losses`, which needs no new
space, so a stop or a crash on a full disk does not drop them. The writer retries every
second on its own, so the gap is stored as soon as there is room, even with no new events.

Errors:
    SpoolError           the spool database cannot be opened or is corrupt (carries path)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from agent.gaps import (
    REASON_DISK_FULL,
    REASON_QUEUE_FULL,
    REASON_REFUSED,
    REASON_SEQUENCE_RESET,
    REASON_SPOOL_FULL,
    REASON_TEXT,
    REASON_TOO_LARGE,
    REASON_WRITE_FAILED,
    Loss,
    add_loss,
    gap_event,
    refused_gap,
)
from agent.spool_disk import LOSSES_FILE, DiskRoom, LossFile, is_disk_full
from common.errors import PathError
from protos import events
from protos import exfilguard_pb2 as pb

log = logging.getLogger("exfilguard.agent.spool")

DB_FILE = "spool.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# One writer transaction takes at most this many queued events, so a flood cannot
# hold the database lock (and the transport's reads) for long.
_GROUP_MAX = 2000
# Without its reserve the writer tries this often to regain room, even with nothing queued.
_RETRY_SECONDS = 1.0


class SpoolError(PathError):
    """The spool database is unusable; carries the path."""


class Spool:
    """Durable, bounded, thread-safe event spool; the sequence counter of this agent lives here."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        agent_id: str,
        version: str,
        max_events: int,
        max_bytes: int,
        max_event_bytes: int = 1 << 20,
        queue_limit: int = 100_000,
    ) -> None:
        self.path = Path(state_dir) / DB_FILE
        self._agent = pb.AgentInfo(id=agent_id, version=version)  # stamped on every stored event
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_event_bytes = max_event_bytes
        self._queue_limit = queue_limit
        self._db_lock = threading.Lock()  # one connection, shared by the writer, acks and reads
        self._cond = threading.Condition()  # guards the queue and the counters below
        self._queue: collections.deque[pb.Event] = collections.deque()
        self._enqueued = 0  # events handed to append()
        self._handled = 0  # of those, stored or counted as lost
        self._wake_writer = False  # an ack freed room: the writer may owe an agent.gap
        self._closing = False
        self._listeners: list[Callable[[], None]] = []
        self._count = 0  # rows stored, not acknowledged
        self._bytes = 0  # their data bytes
        self._next_seq = 1
        self._acked = 0
        self._losses: dict[str, Loss] = {}  # lost and not yet reported by an agent.gap
        self._failing = False  # the last commit failed (disk full ...): log the episode once
        self._generation = 0  # commits so far; tells whether spool.losses is newer than the database
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._room = DiskRoom(self.path)
        self._reserve = self._room.reserve
        self._loss_file = LossFile(self.path.parent / LOSSES_FILE)
        self._fold_at = self._room.step_bytes
        try:
            self._conn = self._open()
        except SpoolError:
            if not self._reserve.release():
                raise
            self._conn = self._open()  # a full disk at start: the reserve pays for the open
        self._room.conn = self._conn
        if not self._reserve.acquire():
            log.error("no room for the %d-byte spool reserve %s: events are counted as lost "
                      "(disk_full) until there is", self._reserve.size, self._reserve.path)
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------ public API

    def append(self, event: pb.Event) -> None:
        """Queue an event for storage; never blocks on disk. The spool takes ownership of `event`.

        Agent id, version and sequence are assigned when the event is stored.
        """
        with self._cond:
            if self._closing:
                # A sensor thread that outlived its stop(): nothing can be stored any more.
                log.warning("event %s emitted after the spool closed; not stored", event.event.action)
                return
            self._enqueued += 1
            if len(self._queue) >= self._queue_limit:
                # Counted under the lock, stored as a gap by the writer.
                add_loss(self._losses, REASON_QUEUE_FULL, event)
                self._handled += 1
                self._wake_writer = True
            else:
                self._queue.append(event)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event appended so far is stored (or counted lost); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            while self._handled < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def unsent(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` stored events with sequence > `after_seq`, in order, as (sequence, bytes)."""
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def ack(self, seq: int) -> int:
        """The collector holds everything up to `seq`: delete it. Returns the number of events deleted."""
        with self._db_lock:
            if seq <= self._acked:
                return 0
            if seq >= self._next_seq:
                # The collector claims more than this spool ever assigned: the spool was
                # replaced or restored from an old copy. Keep what we have; say so.
                log.error(
                    "collector acknowledged sequence %d but this spool only assigned up to %d; "
                    "was %s deleted or restored?", seq, self._next_seq - 1, self.path,
                )
                seq = self._next_seq - 1
                if seq <= self._acked:
                    return 0
            deleted = 0
            # In steps: in WAL mode a delete logs every page it frees, so one delete of a large
            # backlog would need as much free disk as the backlog itself; a step needs no more
            # than the reserve can pay, and once folded in its log space is reused by the next.
            while self._acked < seq:
                upto = min(seq, self._acked + self._ack_step())
                try:
                    deleted += self._delete_step(upto)
                except sqlite3.Error as exc:
                    self._rollback()
                    if not is_disk_full(exc):
                        # Not fatal: the events stay and are sent again; ingest is idempotent.
                        log.warning("could not delete acknowledged events from %s: %s", self.path, exc)
                        break
                    # The disk is full: the reserve pays for folding the log in and for the delete.
                    if self._reserve.release():
                        log.warning("disk full deleting acknowledged events from %s: gave back the "
                                    "spool reserve to make room", self.path)
                    self._room.fold()
                    try:
                        deleted += self._delete_step(upto)
                    except sqlite3.Error as again:
                        self._rollback()
                        log.warning("could not delete acknowledged events from %s: %s", self.path, again)
                        break
            if deleted and self._reserve.held and self._room.tight():
                # Freed pages stay in the database file; on a tight disk the log needs them more.
                self._room.fold()
                self._room.give_back_free_pages()
        with self._cond:
            self._wake_writer = True
            self._cond.notify_all()
        return deleted

    def _ack_step(self) -> int:
        """How many acknowledged events one delete step takes: about a quarter reserve of data."""
        average = self._bytes // self._count if self._count else 1
        return max(1, self._fold_at // max(average, 1))

    def _delete_step(self, upto: int) -> int:
        """Delete events up to `upto` in one transaction and record the ack; returns events deleted."""
        self._conn.execute("BEGIN IMMEDIATE")
        count, size = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM events WHERE seq <= ?", (upto,)
        ).fetchone()
        self._conn.execute("DELETE FROM events WHERE seq <= ?", (upto,))
        self._set_meta("acked_sequence", str(upto))
        self._conn.execute("COMMIT")
        self._acked = upto
        self._count -= int(count)
        self._bytes -= int(size)
        self._room.wrote(int(size) + 4096)
        return int(count)

    def rebase(self, collector_holds: int) -> int:
        """The collector already holds sequences up to `collector_holds`, at or beyond what this
        spool would assign next: continue after it. Returns the sequence of the agent.gap stored.

        This happens when the spool was deleted, replaced or restored from an old copy while
        the agent id stayed. Without it the events numbered again from a lower sequence would
        be taken for resends the collector already holds, acknowledged and dropped, silently.
        Instead the unsent events are renumbered to follow `collector_holds`, after an
        agent.gap that records the reset (how many events the old spool held unsent cannot be
        known, so `lost` is 0 and the reason says why). Both happen in one transaction.
        """
        with self._db_lock:
            if collector_holds < self._next_seq:
                raise ValueError(f"collector holds {collector_holds}, below next sequence {self._next_seq}")
            first_unsent = self._acked + 1
            gap = events.new_event("agent.gap")
            gap.exfilguard.gap.reason = REASON_SEQUENCE_RESET
            gap.event.reason = (
                f"this agent's spool restarted at sequence {first_unsent} but the collector already "
                f"holds its events up to {collector_holds}: {REASON_TEXT[REASON_SEQUENCE_RESET]}; "
                "events the old spool held unsent are lost (count unknown)"
            )
            gap.exfilguard.gap.first.CopyFrom(gap.timestamp)
            gap.exfilguard.gap.last.CopyFrom(gap.timestamp)
            gap_seq = collector_holds + 1
            blob = self._stamp(gap, gap_seq)
            rows = self._conn.execute("SELECT seq, data FROM events ORDER BY seq").fetchall()
            renumbered: list[tuple[int, bytes]] = [(gap_seq, blob)]
            for offset, (_, data) in enumerate(rows, start=gap_seq + 1):
                event = pb.Event()
                event.ParseFromString(data)
                renumbered.append((offset, self._stamp(event, offset)))
            next_seq = gap_seq + len(renumbered)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("DELETE FROM events")
                self._conn.executemany("INSERT INTO events(seq, data) VALUES (?, ?)", renumbered)
                self._set_meta("next_sequence", str(next_seq))
                self._set_meta("acked_sequence", str(collector_holds))
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(str(self.path), f"cannot renumber the spool after a reset: {exc}") from exc
            self._next_seq, self._acked = next_seq, collector_holds
            self._count = len(renumbered)
            self._bytes = sum(len(data) for _, data in renumbered)
        log.error(
            "the collector holds this agent's events up to %d but this spool restarted at %d "
            "(%s deleted or restored?): recorded agent.gap %d and renumbered %d unsent events after it",
            collector_holds, first_unsent, self.path, gap_seq, len(rows),
        )
        return gap_seq

    def set_aside(self, sequence: int, problem: str, keep: Callable[[int, bytes], object]) -> bool:
        """Replace the unsent event `sequence`, which the collector refused, by an agent.gap.

        `keep(sequence, bytes)` saves the original first (agent/refused.py); the gap takes the
        same sequence (reason `refused`, lost 1), so nothing is renumbered and the collector's
        watermark can pass it. False when there is no such unsent event, or it already is
        that gap (the collector refuses the gap too: nothing more the agent can do).
        """
        with self._db_lock:
            if sequence <= self._acked:
                return False
            row = self._conn.execute("SELECT data FROM events WHERE seq = ?", (sequence,)).fetchone()
            if row is None:
                return False
            blob = bytes(row[0])
            refused = pb.Event()
            try:
                refused.ParseFromString(blob)
            except DecodeError:  # our own row, unreadable: set it aside all the same
                refused = pb.Event()
            if refused.event.action == "agent.gap" and refused.exfilguard.gap.reason == REASON_REFUSED:
                return False
            keep(sequence, blob)
            replacement = self._stamp(refused_gap(refused, problem), sequence)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("UPDATE events SET data = ? WHERE seq = ?", (replacement, sequence))
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(str(self.path), f"cannot set refused event {sequence} aside: {exc}") from exc
            self._bytes += len(replacement) - len(blob)
        log.error("the collector refused event %d (%s); set aside with an agent.gap (refused) in its place",
                  sequence, problem)
        return True

    @property
    def appended(self) -> int:
        """Events handed to `append()` since this spool was opened (stored, queued or counted lost)."""
        with self._cond:
            return self._enqueued

    def backlog(self) -> int:
        """Events stored and not yet acknowledged."""
        with self._db_lock:
            return self._count

    def stored_bytes(self) -> int:
        """Bytes of event data stored and not yet acknowledged."""
        with self._db_lock:
            return self._bytes

    @property
    def acked_sequence(self) -> int:
        """The highest sequence the collector has acknowledged (0: none yet)."""
        with self._db_lock:
            return self._acked

    @property
    def next_sequence(self) -> int:
        """The sequence the next stored event will get."""
        with self._db_lock:
            return self._next_seq

    def pending_losses(self) -> dict[str, int]:
        """Lost events per reason not yet reported by a stored agent.gap."""
        with self._cond:
            return {reason: loss.lost for reason, loss in self._losses.items()}

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from the writer thread) after each commit that stored events."""
        self._listeners.append(callback)

    def close(self, timeout: float = 5.0) -> None:
        """Store what is queued (bounded by `timeout`), then stop the writer and close the database."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(timeout)
        with self._db_lock:
            self._conn.close()

    # ------------------------------------------------------------ storage

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.path.chmod(0o600)  # events name files and users
            # Before the first table: lets acknowledged space go back to the file system when
            # the disk is full (no effect on a spool created by an older version).
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # The spool folds the log in itself (DiskRoom.fold): an automatic checkpoint that fails
            # on a full disk says nothing, and the log would grow past what the reserve can pay.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={self._reserve.size}")
            conn.executescript(_SCHEMA)
            count, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM events"
            ).fetchone()
            max_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(str(self.path), f"cannot open spool: {exc}") from exc
        self._count = int(count)
        self._bytes = int(size)
        # Both counters are persisted because acks delete rows: MAX(seq) alone could go backwards.
        self._next_seq = max(int(meta.get("next_sequence", "1")), int(max_seq) + 1)
        self._acked = int(meta.get("acked_sequence", "0"))
        self._generation = int(meta.get("generation", "0"))
        losses = json.loads(meta.get("losses", "{}"))
        saved = self._loss_file.load()
        if saved is not None and saved.get("generation") == self._generation:
            # Counted after the last commit, while the database could not be written: they
            # include what the database holds.
            losses = saved.get("losses", {})
        for reason, raw in losses.items():
            self._losses[reason] = Loss(int(raw["lost"]), tuple(raw["first"]), tuple(raw["last"]))
        return conn

    def _save_pending(self) -> None:
        """Keep pending loss counts in spool.losses: the database did not take them."""
        with self._cond:
            losses = {r: {"lost": x.lost, "first": x.first, "last": x.last} for r, x in self._losses.items()}
        self._loss_file.save({"generation": self._generation, "losses": losses})

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction was open
            self._conn.execute("ROLLBACK")

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._wake_writer and not self._closing:
                    if self._reserve.held:
                        self._cond.wait()
                    elif not self._cond.wait(_RETRY_SECONDS):
                        break  # no reserve: try to regain room although nothing is queued
                if self._closing and not self._queue:
                    self._store_group([])  # a last chance to record pending gaps
                    return
                group = self._take_group()
                self._wake_writer = False
            stored = self._store_group(group)
            with self._cond:
                self._handled += len(group)
                self._cond.notify_all()
            if stored:
                for callback in self._listeners:
                    callback()

    def _take_group(self) -> list[pb.Event]:
        """Queued events for one transaction (caller holds `_cond`): bounded in count and in bytes,
        so the log a commit leaves stays within what the reserve can fold in."""
        group: list[pb.Event] = []
        size = 0
        while self._queue and len(group) < _GROUP_MAX and size < self._fold_at:
            event = self._queue.popleft()
            size += event.ByteSize()
            group.append(event)
        return group

    def _store_group(self, group: list[pb.Event]) -> int:
        """Store `group` (and any gaps owed) in one transaction; returns how many rows were stored."""
        with self._db_lock:
            with self._cond:
                owed, self._losses = self._losses, {}  # append() may add more meanwhile
            if not self._room.regain():
                # No room to store anything safely: count the group, keep the gaps owed.
                if not self._failing:
                    log.error("the disk holding %s is full: events are counted as lost (disk_full) "
                              "until there is room again", self.path)
                    self._failing = True
                for event in group:
                    add_loss(owed, REASON_DISK_FULL, event)
                self._restore_losses(owed)
                if group or owed:
                    self._save_pending()
                return 0
            next_seq, count, size = self._next_seq, self._count, self._bytes
            rows: list[tuple[int, bytes]] = []

            def room(extra: int) -> bool:
                return count < self._max_events and size + extra <= self._max_bytes

            # Gaps come first: they report events lost before anything in this group.
            # A gap takes the room it needs like any event, so the bounds hold exactly.
            losses = {r: dataclasses.replace(x) for r, x in owed.items()}
            gaps_stored = False
            if owed:
                gaps = [gap_event(reason, loss) for reason, loss in sorted(owed.items())]
                blobs = [self._stamp(gap, next_seq + i) for i, gap in enumerate(gaps)]
                if count + len(blobs) <= self._max_events and size + sum(map(len, blobs)) <= self._max_bytes:
                    for blob in blobs:
                        rows.append((next_seq, blob))
                        next_seq, count, size = next_seq + 1, count + 1, size + len(blob)
                    losses, gaps_stored = {}, True
            for event in group:
                blob = self._stamp(event, next_seq)
                if len(blob) > self._max_event_bytes:
                    add_loss(losses, REASON_TOO_LARGE, event)
                elif not room(len(blob)):
                    add_loss(losses, REASON_SPOOL_FULL, event)
                else:
                    rows.append((next_seq, blob))
                    next_seq, count, size = next_seq + 1, count + 1, size + len(blob)
            if not rows and losses == owed:
                self._restore_losses(losses)
                return 0
            meta = {
                "next_sequence": str(next_seq),
                "losses": json.dumps(
                    {r: {"lost": x.lost, "first": x.first, "last": x.last} for r, x in losses.items()}),
                "generation": str(self._generation + 1),
            }
            try:
                try:
                    self._commit(rows, meta)
                except sqlite3.Error as first:
                    self._rollback()
                    # The reserve pays for folding the log in and giving freed pages back; if
                    # that makes room for the reserve again, the group is stored after all.
                    if not (is_disk_full(first) and self._reserve.release() and self._room.regain()):
                        raise
                    self._commit(rows, meta)
            except (sqlite3.Error, OSError) as exc:
                self._rollback()
                full = is_disk_full(exc)
                if full:
                    self._reserve.release()  # pays for folding the log in and deleting acked events
                reason = REASON_DISK_FULL if full else REASON_WRITE_FAILED
                # Once per episode: a full disk must not also fill the journal.
                report = log.debug if self._failing else log.error
                report("spool write failed (%s); events are counted as lost (%s) until it works again",
                       exc, reason)
                self._failing = True
                # Nothing of this group reached the disk: all of it is lost, the gaps stay owed.
                for event in group:
                    add_loss(owed, reason, event)
                self._restore_losses(owed)
                self._save_pending()
                return 0
            self._generation += 1
            self._next_seq, self._count, self._bytes = next_seq, count, size
            self._restore_losses(losses)
            self._room.wrote(sum(len(blob) for _, blob in rows))
            if self._failing:
                self._failing = False
                log.warning("spool writes work again")
            if gaps_stored:
                for reason, loss in sorted(owed.items()):
                    log.warning("recorded agent.gap: %d events lost (%s)", loss.lost, reason)
            return len(rows)

    def _commit(self, rows: list[tuple[int, bytes]], meta: dict[str, str]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany("INSERT INTO events(seq, data) VALUES (?, ?)", rows)
        for key, value in meta.items():
            self._set_meta(key, value)
        self._conn.execute("COMMIT")

    def _restore_losses(self, losses: dict[str, Loss]) -> None:
        """Put owed losses back, merged with any that append() counted meanwhile."""
        with self._cond:
            for reason, loss in losses.items():
                mine = self._losses.get(reason)
                if mine is None:
                    self._losses[reason] = loss
                else:
                    mine.lost += loss.lost
                    mine.first = min(mine.first, loss.first)
                    mine.last = max(mine.last, loss.last)

    def _stamp(self, event: pb.Event, seq: int) -> bytes:
        event.agent.CopyFrom(self._agent)
        event.event.sequence = seq
        return event.SerializeToString()
