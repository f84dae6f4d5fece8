"""ResponderLink: the agent's end of the content guard's responder process (responder.py).

The responder is a child process (`python -m agent.prevent.responder`) that reads the permission
group and answers the opens of processes already found clean itself, away from the agent's
other threads and its interpreter lock; everything else it hands to the agent. Between them:

  a socket pair (SOCK_SEQPACKET)   one JSON list of messages per packet, in order both ways;
  a shared page (memfd)            DataFlow.version, written by the agent at each new version
                                   and read by the responder at each cached answer, so a verdict
                                   never outlives a change of lineage by a message in flight.

Messages, responder -> agent: ["heard", pid, pgid, path, when] (a tagged open, sent before any
open read after it), ["ask", seq, fd, pid, path, dev, size, read_at] (decide this open),
["fast", latencies, [[pid, pgid, path], ...] writers, tagged] (answered here, and the writers),
["armed", quiet] (it marked the sticks; quiet: nothing writes to removable media),
["disarmed"] (it took their marks off), ["defaulted", n], ["synced", n], ["overflow"].
Agent -> responder: ["answer", seq, allow], ["clean", pid, ppid, pgid, chain, version],
["sync", n, armed] (and "disarm": take the sticks' marks off unless a tagged open came since
the last sync; "arm": mark them), ["derived", paths], ["devs", [[dev, mount point], ...]],
["writer", pid, pgid], ["writers", [[pid, pgid], ...]], ["roots", {root: tags}], ["stop"].
The sticks' marks are the responder's to place and take off (agent/prevent/arming.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

VERSION = struct.Struct("=q")  # the shared page: DataFlow.version, -1 without lineage
PACKET_BYTES = 1 << 20          # the largest packet read (SOCK_SEQPACKET keeps their bounds)
PACKET_LIMIT = 64 * 1024        # bytes: a packet stays well within the socket's send buffer
_SEND_SECONDS = 2.0             # a send that cannot go through in this long: the responder is lost

Message = list[Any]


def packets(messages: list[Message]) -> list[bytes]:
    """The messages as packets of at most PACKET_LIMIT bytes each (one message may be longer:
    its own packet, up to the socket's send buffer; a path is at most 4 KiB)."""
    out: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for message in messages:
        encoded = json.dumps(message).encode()
        if batch and size + len(encoded) > PACKET_LIMIT:
            out.append(b"[" + b",".join(batch) + b"]")
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        out.append(b"[" + b",".join(batch) + b"]")
    return out


def receive(sock: socket.socket) -> list[Message] | None:
    """Every message waiting on a non-blocking read; None when the other end is gone."""
    out: list[Message] = []
    while True:
        try:
            data = sock.recv(PACKET_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:
            return None
        if not data:
            return None
        out.extend(json.loads(data))


class ResponderLink:
    """A running responder process and the socket and page shared with it."""

    def __init__(self, config: dict[str, Any], inherit: tuple[int, ...]) -> None:
        """Start the responder with `config` (responder.py reads it), handing it the descriptors
        `inherit` (the permission and hearing groups) besides the link's own."""
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        self._lock = threading.Lock()
        page = os.memfd_create("exfilguard-flow-version", os.MFD_CLOEXEC)
        try:
            os.ftruncate(page, VERSION.size)
            self._page = mmap.mmap(page, VERSION.size)
            config = {**config, "link": theirs.fileno(), "page": page}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.prevent.responder", json.dumps(config)],
                pass_fds=(*inherit, theirs.fileno(), page), close_fds=True)
        finally:
            theirs.close()
            os.close(page)
        self.lost = False

    @property
    def fd(self) -> int:
        """The descriptor to poll for messages."""
        return self._sock.fileno()

    def send(self, *messages: Message) -> bool:
        """Send in order; False (and the link lost) when the responder takes none of it."""
        try:
            with self._lock:
                for packet in packets(list(messages)):
                    self._send(packet)
        except OSError:
            self.lost = True
            return False
        return True

    def _send(self, packet: bytes) -> None:
        # a packet goes whole or not at all; a full buffer (the responder busy) is waited for
        deadline = time.monotonic() + _SEND_SECONDS
        while True:
            try:
                self._sock.send(packet)
                return
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the responder takes no message") from None
                poller = select.poll()
                poller.register(self._sock.fileno(), select.POLLOUT)
                poller.poll(left * 1000)

    def receive(self) -> list[Message] | None:
        """Every message waiting; None when the responder is gone."""
        return receive(self._sock)

    def set_version(self, version: int) -> None:
        """Publish DataFlow.version to the responder (called under DataFlow's lock)."""
        VERSION.pack_into(self._page, 0, version)

    def close(self) -> None:
        """Ask the responder to stop (it allows what it still holds), then wait for it."""
        self.send(["stop"])
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._sock.close()
        with contextlib.suppress(BufferError):
            self._page.close()
