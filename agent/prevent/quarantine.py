"""Quarantine: tagged data found on a stick only after it landed is moved off it.

With prevent.removable_writes: block, a `file.copy` on evidence (content: exact, sampled,
member, chunks, text; or byte-correlated lineage) of a file still on removable media means the
copy got past the guard (written in the moment between a mount and its mark, or while the
agent was not running, or through a path lineage lost). The file is copied into a root-only
directory under the agent's state directory, checked, and removed from the stick;
`file.quarantine` says where it went. `exfilguard quarantine list|restore` (admin/quarantine.py)
shows and gives back what was taken.

Layout: STATE_DIR/quarantine/<id>.data (the bytes) and <id>.json (Entry), where <id> is the
file.quarantine event's id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.prevent import grants
from agent.prevent.errors import PreventError
from agent.prevent.notify import tell_user
from agent.sensors import Emit, procinfo
from agent.sensors.media import RemovableMedia
from common.agentconfig import PreventException
from protos import exfilguard_pb2 as pb
from protos.events import new_event

log = logging.getLogger(__name__)

EVIDENCE = frozenset({"exact", "sampled", "member", "chunks", "text", "lineage-bytes"})
MAX_PENDING = 1024
_CHUNK = 1 << 20


@dataclass
class Entry:
    """What a quarantined file was: where it lay, on which device, for whom, why."""

    id: str
    path: str
    size: int
    sha256: str
    device_serial: str
    user: str
    source: str
    tags: list[str]
    identified_by: str
    quarantined_at: float


def directory(state_dir: str | os.PathLike[str]) -> Path:
    """The quarantine directory of an agent state directory."""
    return Path(state_dir) / "quarantine"


def entries(state_dir: str | os.PathLike[str]) -> list[Entry]:
    """Everything quarantined, oldest first."""
    found = []
    for meta in sorted(directory(state_dir).glob("*.json")):
        try:
            found.append(Entry(**json.loads(meta.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("quarantine entry %s unreadable: %s", meta, exc)
    return sorted(found, key=lambda e: e.quarantined_at)


def restore(state_dir: str | os.PathLike[str], entry_id: str, to: str | None = None) -> Path:
    """Give a quarantined file back (to its old path, or `to`); returns where it went.
    Raises PreventError when there is no such entry or the target exists."""
    where = directory(state_dir)
    if not entry_id or "/" in entry_id or entry_id.startswith("."):
        raise PreventError(f"quarantine entry {entry_id!r}: not an entry id")
    meta, data = where / f"{entry_id}.json", where / f"{entry_id}.data"
    try:
        entry = Entry(**json.loads(meta.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise PreventError(f"quarantine entry {entry_id!r}: {exc}") from exc
    target = Path(to or entry.path)
    if target.is_dir():
        target /= Path(entry.path).name
    if target.exists():
        raise PreventError(f"quarantine entry {entry_id!r}: {target} exists; pass another --to")
    try:
        shutil.copyfile(data, target)
    except OSError as exc:
        raise PreventError(f"quarantine entry {entry_id!r}: cannot write {target}: {exc}") from exc
    data.unlink()
    meta.unlink()
    return target


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # noqa: PTH123
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Quarantine:
    """Moves tagged data found on removable media off it, on a thread of its own."""

    name = "quarantine"

    def __init__(self, state_dir: str, media: RemovableMedia, emit: Emit,
                 exceptions: Sequence[PreventException] = ()) -> None:
        self.where = directory(state_dir)
        self.media = media
        self._emit = emit
        self.exceptions = list(exceptions)  # grants the agent honours: their copies stay on the stick
        # files allowed users or groups wrote (the guard's Decider.spared): they stay too
        self.spared: Callable[[str], bool] = lambda _path: False
        self._work: queue.Queue[pb.Event | None] = queue.Queue(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self.moved = 0

    def start(self) -> None:
        """Make the root-only directory and run the mover."""
        self.where.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.where.chmod(0o700)
        self._thread = threading.Thread(target=self._run, name="exfilguard-quarantine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop; idempotent."""
        if self._thread is not None:
            self._work.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def consider(self, event: pb.Event) -> None:
        """Every event the copy sensors emit passes here: queue evidenced copies on removable media."""
        if event.event.action != "file.copy":
            return
        copy = event.exfilguard.copy
        evidenced = (copy.identified_by in EVIDENCE and copy.confidence >= 0.5) or (
            not copy.identified_by and "fingerprint" in copy.method)
        if not evidenced or (mount := self.media.mount_for(event.file.path)) is None:
            return
        if grants.covering(self.exceptions, event.user.name, mount.device.serial) is not None:
            return  # copied under an officer's grant (reported as file.allow): not to be taken back
        if self.spared(event.file.path):
            return  # written by prevent.allowed_users / allowed_groups (imaging staff)
        try:
            self._work.put_nowait(event)
        except queue.Full:
            log.error("quarantine queue full: %s stays on the stick", event.file.path)

    def _run(self) -> None:
        for event in iter(self._work.get, None):  # until stop() queues None
            try:
                self._move(event)
            except Exception:
                log.exception("quarantine of %s failed", event.file.path)

    def _move(self, copy: pb.Event) -> None:
        path = copy.file.path
        try:
            before = os.stat(path)  # noqa: PTH116
        except OSError:
            return  # gone already (deleted, renamed, the stick pulled)
        event = new_event("file.quarantine", tags=list(copy.tags))
        entry_id = event.event.id  # the entry is named by the event that reports it
        data = self.where / f"{entry_id}.data"
        shutil.copyfile(path, data)
        data.chmod(0o600)
        with open(data, "rb") as fh:  # noqa: PTH123
            os.fsync(fh.fileno())
        after = os.stat(path)  # noqa: PTH116
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            data.unlink()
            log.warning("quarantine: %s changed while it was copied; left on the stick", path)
            return
        entry = Entry(id=entry_id, path=path, size=before.st_size, sha256=_sha256(str(data)),
                      device_serial=copy.device.serial, user=copy.user.name,
                      source=copy.exfilguard.source.path, tags=list(copy.tags),
                      identified_by=copy.exfilguard.copy.identified_by or "fingerprint",
                      quarantined_at=time.time())
        meta = self.where / f"{entry_id}.json"
        meta.write_text(json.dumps(asdict(entry), indent=1))
        meta.chmod(0o600)
        try:
            os.unlink(path)  # noqa: PTH108
        except OSError as exc:
            with contextlib.suppress(OSError):
                data.unlink()
                meta.unlink()
            log.error("quarantine: cannot remove %s from the stick: %s", path, exc)
            return
        self.moved += 1
        event.file.CopyFrom(copy.file)
        event.device.CopyFrom(copy.device)
        event.exfilguard.source.CopyFrom(copy.exfilguard.source)
        event.exfilguard.copy.CopyFrom(copy.exfilguard.copy)
        event.process.CopyFrom(copy.process)
        event.user.CopyFrom(copy.user)
        event.exfilguard.attribution = copy.exfilguard.attribution or procinfo.NONE
        event.event.reason = (f"tagged data found on removable media after it landed "
                              f"({entry.identified_by}, source {entry.source}): moved off the stick to the "
                              f"agent's quarantine as {entry_id} (exfilguard quarantine restore {entry_id})")
        self._emit(event)
        uid = int(copy.user.id) if copy.user.id.isdigit() else -1
        tell_user(uid, "ExfilGuard moved a file off removable media", f"{path}: {event.event.reason}")
