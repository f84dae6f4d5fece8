"""The systemd notify protocol (sd_notify(3)) for both daemons, and a watchdog pinger.

A service with `Type=notify` tells systemd `READY=1` once it serves, `WATCHDOG=1` at least
every `WatchdogSec` (systemd passes the interval as `$WATCHDOG_USEC`) and `STOPPING=1` when it
begins a clean stop. The protocol is one datagram of `KEY=value` lines to the AF_UNIX socket
named by `$NOTIFY_SOCKET` (a leading `@` means the Linux abstract namespace). Outside systemd
the variable is unset and every call here is a no-op, so the daemons need no special mode.

    notifier = Notifier.from_environment()
    notifier.ready(status="serving on 0.0.0.0:50051")
    with notifier.watchdog():          # or: await notifier.watchdog_task() in asyncio code
        serve_forever()
    notifier.stopping()

The pinger only proves the process still schedules work; a daemon that wants the watchdog to
catch a wedged main loop should ping from that loop (`notifier.ping()`), not from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

MAX_DATAGRAM = 4096  # systemd reads at most a page per notification; longer status is cut
_MAX_STATUS = 1024


@dataclass(frozen=True)
class Notifier:
    """Sends notifications to systemd; `address` None means "not under systemd" (no-op)."""

    address: str | None
    watchdog_seconds: float | None = None  # WatchdogSec, when this process is the one watched

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (which must be our pid, if set)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        return cls(address=address, watchdog_seconds=_watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given (we run under systemd with Type=notify)."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines in one datagram; False if not under systemd or it failed.

        Failures are swallowed on purpose: a lost notification must never stop the daemon
        (systemd's own sd_notify behaves the same), and the watchdog will say if it matters.
        """
        if self.address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")[:MAX_DATAGRAM]
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall(payload)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (with an optional STATUS line shown by `systemctl status`)."""
        return self.notify("READY=1", *_status_line(status))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: a clean stop has begun, so systemd does not count it as a hang."""
        return self.notify("STOPPING=1", *_status_line(status))

    def status(self, text: str) -> bool:
        """STATUS=text, one line, bounded."""
        return self.notify(*_status_line(text))

    def ping(self) -> bool:
        """WATCHDOG=1: we are alive."""
        return self.notify("WATCHDOG=1")

    @property
    def ping_interval(self) -> float | None:
        """Half of WatchdogSec, as sd_watchdog_enabled(3) recommends; None if no watchdog."""
        return None if self.watchdog_seconds is None else self.watchdog_seconds / 2

    @contextlib.contextmanager
    def watchdog(self) -> Iterator[WatchdogThread | None]:
        """Ping from a daemon thread for the duration of the block (nothing if no watchdog)."""
        if not self.enabled or self.ping_interval is None:
            yield None
            return
        pinger = WatchdogThread(self, self.ping_interval)
        pinger.start()
        try:
            yield pinger
        finally:
            pinger.stop()

    async def watchdog_task(self) -> None:
        """Ping forever from the event loop (so a blocked loop stops the pings); cancel to end."""
        interval = self.ping_interval
        if not self.enabled or interval is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(interval)


class WatchdogThread:
    """A daemon thread that sends WATCHDOG=1 every `interval` seconds until stopped."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        self._notifier = notifier
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def start(self) -> None:
        """Start pinging (the first ping goes out at once)."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging and wait for the thread, bounded."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        self._notifier.ping()
        while not self._stop.wait(self._interval):
            self._notifier.ping()


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # WATCHDOG_PID says which process systemd watches; a child that inherited the
    # environment (a helper, a forked worker) must not ping in the main process's name.
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


def _status_line(text: str | None) -> list[str]:
    if text is None:
        return []
    # A newline would start a new KEY=value line, letting status text forge READY=1 etc.
    flat = " ".join(text.split())[:_MAX_STATUS]
    return [f"STATUS={flat}"]
