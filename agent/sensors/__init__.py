"""Sensors: each owns one OS resource and turns what it sees into events.

The sensor contract: a sensor is built with the agent config and an `emit` callback,
and has `start()` and `stop()`. `emit` is thread-safe and never blocks for long (it
appends to the spool). Which sensors run and how they feed each other is wired in one
place, `agent/sensors/wiring.py`, called by the agent's main.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from protos import exfilguard_pb2 as pb

Emit = Callable[[pb.Event], None]


class Sensor(Protocol):
    """What the agent's main needs of a sensor."""

    name: str

    def start(self) -> None:
        """Begin watching; returns once the sensor is running in its own thread(s)."""

    def stop(self) -> None:
        """Stop watching and release OS resources; idempotent."""
