"""Sensors: each owns one OS resource and turns what it sees into events.

A sensor is built with the agent config and an `emit` callback, and has `start()`
and `stop()`. The agent's main module builds the list; nothing else wires sensors.
`emit` is thread-safe and never blocks for long (it appends to the spool).
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
