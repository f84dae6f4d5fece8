"""Prevention tests use real udev, loop-device sticks and mounts (see tests/devices.py)."""

from tests.devices import loop_stick, udevd

__all__ = ["loop_stick", "udevd"]
