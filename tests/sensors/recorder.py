"""A plain list-appending emit callback with bounded polling, for sensor tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from protos import exfilguard_pb2 as pb
from protos.events import to_mapping

Mapping = dict[str, Any]


class Recorder:
    """Collects emitted events as dotted mappings; `wait_for` polls with a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[Mapping] = []

    def __call__(self, event: pb.Event) -> None:
        mapping = to_mapping(event)
        with self._lock:
            self.events.append(mapping)

    def matching(self, predicate: Callable[[Mapping], bool]) -> list[Mapping]:
        """Events so far that satisfy `predicate`."""
        with self._lock:
            return [e for e in self.events if predicate(e)]

    def wait_for(self, predicate: Callable[[Mapping], bool], timeout: float = 15.0,
                 count: int = 1) -> list[Mapping]:
        """Wait until at least `count` events satisfy `predicate`; fail with what was seen."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(predicate)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                actions = [(e.get("event.action"), e.get("file.path")) for e in self.events[-40:]]
                raise AssertionError(f"expected {count} matching event(s), got {len(found)}; last: {actions}")
            time.sleep(0.02)

    @staticmethod
    def action(action: str, wanted: Mapping | None = None) -> Callable[[Mapping], bool]:
        """A predicate: this action with these dotted fields equal to these values."""
        wanted = wanted or {}

        def check(event: Mapping) -> bool:
            return event.get("event.action") == action and all(event.get(k) == v for k, v in wanted.items())

        return check
