"""Events the collector refused, set aside on disk for an admin to inspect (bounded).

The collector refuses a batch with INVALID_ARGUMENT when one of its events cannot be stored
(a bad timestamp, a NUL in a string, ...) and names that event's sequence. Sending it again
would be refused again, for ever, and would hold back every later event of this agent. So the
transport keeps a copy of the event here and the spool replaces it, under the same sequence,
with an `agent.gap` (reason `refused`, lost 1): the collector's watermark moves on and the loss
is counted where it happened.

Layout: `state_dir/refused/<sequence>.json`, one file per event, holding the collector's
words, the time, the event as protobuf text and as base64 of its bytes (exactly what was
sent). At most `MAX_KEPT` files and `MAX_KEPT_BYTES` in all: the oldest go first (the
agent.gap already counted the event; the copy is for diagnosis, not delivery).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from common.ecstime import ecs_now
from protos import exfilguard_pb2 as pb

log = logging.getLogger("exfilguard.agent.refused")

DIRECTORY = "refused"
MAX_KEPT = 100
MAX_KEPT_BYTES = 16 << 20


class RefusedEvents:
    """The bounded directory of refused events in the agent's state_dir."""

    def __init__(
        self, state_dir: str | Path, max_kept: int = MAX_KEPT, max_bytes: int = MAX_KEPT_BYTES
    ) -> None:
        self.path = Path(state_dir) / DIRECTORY
        self.max_kept = max_kept
        self.max_bytes = max_bytes

    def keep(self, sequence: int, blob: bytes, collector: str, problem: str) -> Path:
        """Write one refused event (idempotent per sequence, durable before it returns); trim the oldest."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        event = pb.Event()
        with contextlib.suppress(DecodeError):  # a copy for reading: undecodable bytes stay in base64
            event.ParseFromString(blob)
        record = {
            "sequence": sequence,
            "refused_at": ecs_now(),
            "collector": collector,
            "problem": problem,
            "event": text_format.MessageToString(event, as_utf8=True),
            "bytes_base64": base64.b64encode(blob).decode("ascii"),
        }
        target = self.path / f"{sequence:020d}.json"
        temporary = target.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as out:  # events name files and users: 0600
            os.fchmod(out.fileno(), 0o600)
            json.dump(record, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(target)
        self._trim()
        return target

    def sequences(self) -> list[int]:
        """Sequences of the refused events kept, oldest first."""
        if not self.path.is_dir():
            return []
        return sorted(int(p.stem) for p in self.path.glob("*.json") if p.stem.isdigit())

    def _trim(self) -> None:
        files = sorted(self.path.glob("*.json"))
        total = sum(p.stat().st_size for p in files)
        while files and (len(files) > self.max_kept or total > self.max_bytes):
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            log.warning("dropped the kept copy of refused event %s (at most %d kept in %s)",
                        oldest.stem.lstrip("0"), self.max_kept, self.path)
