"""A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """Bound datagram socket that collects the notifications a daemon sends."""

    def __init__(self, directory: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"exfilguard-test-{id(self)}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Receive until `line` has been seen `count` times (bounded); return all messages so far."""
        deadline = time.monotonic() + timeout
        while sum(line in m.splitlines() for m in self.messages) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} x{count} within {timeout}s; got {self.messages!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append(data.decode())
        return self.messages

    def drain(self) -> list[str]:
        """Take what is queued without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return self.messages

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
