"""Reports: the content guard's events, `file.block` (and the user told) and `file.allow` (a
grant used), with the stick, the process and the tagged data they name."""

# ruff: noqa: PTH119

from __future__ import annotations

import logging
import os
import time

from agent.prevent.decide import Verdict
from agent.prevent.notify import tell_user
from agent.sensors import Emit, procinfo
from agent.sensors.media import RemovableMedia
from agent.sensors.staging import file_fields
from common.agentconfig import PreventException
from protos.events import fs_text, new_event

log = logging.getLogger("agent.prevent.guard")

TELL_USER_SECONDS = 10.0   # one notification per user per this long (tar refused 2,000 times)


class Reports:
    """The events of one content guard."""

    def __init__(self, media: RemovableMedia, emit: Emit) -> None:
        self.media = media
        self._emit = emit
        self._told: dict[int, float] = {}
        self._excepted_pids: dict[int, str] = {}  # pid -> the exception reported for it (once each)

    def blocked(self, path: str, size: int, removable: bool, pid: int, verdict: Verdict,  # noqa: PLR0917
                info: procinfo.ProcessInfo | None) -> None:
        """An open refused: `file.block`, a journal line, and the user told (at most every 10 s)."""
        event = new_event("file.block", tags=list(verdict.tags), file=file_fields(path, size))
        mount = self.media.mount_for(path) if removable else None
        if mount is None and not removable:
            # the tagged file was refused: name the stick its process writes to
            mount = next(iter(self.media.mounts()), None) if len(self.media.mounts()) == 1 else None
        if mount is not None:
            event.device.CopyFrom(mount.device)
        event.exfilguard.source.path = fs_text(verdict.source)
        event.exfilguard.source.tags.extend(verdict.tags)
        what = f"{'write to removable media' if removable else 'tagged file read'} {fs_text(path)}"
        event.event.reason = f"blocked {what}: {verdict.why} (prevent.removable_writes: block)"
        procinfo.describe(event, info, procinfo.EXACT, pid)
        self._emit(event)
        uid = info.uid if info is not None else -1
        now = time.monotonic()
        if now - self._told.get(uid, -TELL_USER_SECONDS) >= TELL_USER_SECONDS:
            self._told[uid] = now
            tell_user(uid, "ExfilGuard blocked a copy to removable media",
                      f"{os.path.basename(verdict.source)}: {event.event.reason}")
        else:
            log.info("prevent: %s", event.event.reason)

    def excepted(self, pid: int, path: str, grant: PreventException, verdict: Verdict) -> None:
        """A grant let an open go that would have been refused: `file.allow`, once per process,
        naming the grant, who granted it and why (the trail shows it used)."""
        key = f"{grant.id}|{grant.user}|{grant.device}|{grant.until.isoformat()}"
        if self._excepted_pids.get(pid) == key:
            return
        self._excepted_pids[pid] = key
        while len(self._excepted_pids) > 4096:
            del self._excepted_pids[next(iter(self._excepted_pids))]
        event = new_event("file.allow", tags=list(verdict.tags), file=file_fields(path, 0))
        if (mount := self.media.mount_for(path)) is not None:
            event.device.CopyFrom(mount.device)
        event.exfilguard.source.path = fs_text(verdict.source)
        event.exfilguard.source.tags.extend(verdict.tags)
        event.event.reason = (f"allowed by grant {grant.id} (granted by {grant.granted_by}: "
                              f"{grant.note or 'no note'}) for {grant.user}"
                              f"{' on device ' + grant.device if grant.device else ''} until "
                              f"{grant.until.isoformat()}; without it: {verdict.why}")
        procinfo.describe(event, procinfo.read_proc(pid), procinfo.EXACT, pid)
        self._emit(event)
