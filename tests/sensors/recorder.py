"""A plain list-appending emit callback with bounded polling, and the sensors run with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from agent.sensors import Sensor
from agent.sensors.wiring import build_sensors
from common.agentconfig import AgentConfig
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

    def mark(self) -> int:
        """A position in the events: `after=` it, only events recorded later count."""
        with self._lock:
            return len(self.events)

    def matching(self, predicate: Callable[[Mapping], bool], after: int = 0) -> list[Mapping]:
        """Events so far (from position `after`) that satisfy `predicate`."""
        with self._lock:
            return [e for e in self.events[after:] if predicate(e)]

    def wait_for(self, predicate: Callable[[Mapping], bool], timeout: float = 15.0,
                 count: int = 1, after: int = 0) -> list[Mapping]:
        """Wait until at least `count` events (from position `after`) satisfy `predicate`;
        fail with what was seen."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(predicate, after)
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


class Running:
    """Sensors (build_sensors) started with a Recorder; stopped in reverse order."""

    def __init__(self, config: AgentConfig) -> None:
        self.events = Recorder()
        self.sensors: list[Sensor] = build_sensors(config, self.events)

    def sensor(self, name: str) -> Sensor:
        """The running sensor called `name`."""
        return next(s for s in self.sensors if s.name == name)

    def __enter__(self) -> Running:
        for sensor in self.sensors:
            sensor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sensor in reversed(self.sensors):
            sensor.stop()
