"""Formatted: stored events read back and turned into JSON once, for every destination of a process.

    shared = Formatted(store_location, size=4 * 500)
    mapping, doc = shared.get("agent-1", 42, stored_bytes, "ecs")

Destinations that keep up read the same rows at about the same time: the first to reach an
event decodes it (`to_mapping`, half of what forwarding an event costs) and lays it out in its
format; the others take the mapping, and the JSON when their format is the same. Bounded: the
oldest entries go first, and a destination far behind decodes what it reads on its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from collector import formats
from collector.store.rows import stored_mapping

Read = tuple[Mapping[str, Any], bytes]  # an event's mapping, and its JSON in one format


class Formatted:
    """The last `size` events read by any destination: their mappings and JSON by format."""

    def __init__(self, location: str, size: int) -> None:
        self.location = location
        self.size = size
        self.conversions = 0  # JSON documents made (an event in two formats counts twice)
        self._entries: OrderedDict[tuple[str, int], tuple[Mapping[str, Any], dict[str, bytes]]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()

    def get(self, agent_id: str, sequence: int, data: bytes, fmt: str) -> Read:
        """The stored event's mapping and its JSON in `fmt`, made now unless another destination did.

        Made under the lock: the GIL runs one thread at a time anyway, and so the destination that
        comes second waits for the first's work instead of doing it again.
        """
        key = (agent_id, sequence)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = (stored_mapping(self.location, agent_id, sequence, data), {})
                if len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            mapping, docs = entry
            doc = docs.get(fmt)
            if doc is None:
                doc = docs[fmt] = formats.event_json(fmt, mapping)
                self.conversions += 1
        return mapping, doc


def alone(location: str, agent_id: str, sequence: int, data: bytes, fmt: str) -> Read:
    """The same as Formatted.get, for a destination that shares with none (nothing kept)."""
    mapping = stored_mapping(location, agent_id, sequence, data)
    return mapping, formats.event_json(fmt, mapping)
