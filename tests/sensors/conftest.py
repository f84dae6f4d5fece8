"""Sensor tests use real udev, loop devices and mounts (see tests/devices.py)."""

from tests.devices import loop_stick, udevd

__all__ = ["loop_stick", "udevd"]
