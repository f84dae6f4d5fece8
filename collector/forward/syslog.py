"""SyslogTransport: syslog messages over UDP, TCP (RFC 6587) or TLS (RFC 5425), octet-counted.

    wire = SyslogTransport("siem.example:6514", "tls", ca="/etc/exfilguard/siem-ca.pem")
    wire.send([message, ...])        # each framed as "LEN SP MSG"; OSError when it cannot
    wire.close()

TLS verifies the receiver's certificate against `ca` (default: the system's trust store) and
its name against `server_name` (default: the address's host); a client certificate is offered
when `cert` and `key` are set. One connection is kept and reopened after an error.

Syslog has no acknowledgements: a message is delivered once the kernel took it, as far as the
sender can know. Before a caller counts a batch as delivered, `send` checks that the receiver
has not closed the connection meanwhile (an EOF waiting to be read), so a receiver that went
away is noticed at the next batch at the latest.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Sequence
from typing import Protocol

from collector.alerts.secrets import tls_context

MAX_UDP_BYTES = 8192
FACILITY = 10  # authpriv: security messages
APP = "exfilguard"
# Private enterprise number placeholder for the structured data id (RFC 5424 §7.2.2 needs one).
SD_ID = "exfilguard@32473"


def sd_value(text: object) -> str:
    """A structured-data parameter value, escaped as RFC 5424 §6.3.3 asks."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class SyslogReceiver(Protocol):
    """A config entry naming a syslog receiver (an alert sink's, a forward destination's)."""

    @property
    def address(self) -> str: ...
    @property
    def protocol(self) -> str: ...
    @property
    def ca(self) -> str | None: ...
    @property
    def server_name(self) -> str | None: ...
    @property
    def cert(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...


class SyslogTransport:
    """One connection to a syslog receiver."""

    @classmethod
    def configured(cls, receiver: SyslogReceiver, timeout: float = 5.0) -> SyslogTransport:
        """The connection to the receiver a config entry names."""
        return cls(receiver.address, receiver.protocol, ca=receiver.ca, server_name=receiver.server_name,
                   cert=receiver.cert, key=receiver.key, timeout=timeout)

    def __init__(
        self,
        address: str,
        protocol: str = "udp",
        *,
        ca: str | None = None,
        server_name: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"syslog address must be host:port, got {address!r}")
        if protocol not in ("udp", "tcp", "tls"):
            raise ValueError(f"syslog transport is udp, tcp or tls, got {protocol!r}")
        self.host = host.strip("[]")
        self.port = int(port)
        self.protocol = protocol
        self.timeout = timeout
        self.server_name = server_name or self.host
        self._context: ssl.SSLContext | None = None
        if protocol == "tls":
            self._context = tls_context(ca, f"syslog {self.host}:{self.port}", cert, key)
        self._sock: socket.socket | None = None

    @property
    def where(self) -> str:
        """host:port/transport, for messages."""
        return f"{self.host}:{self.port}/{self.protocol}"

    def send(self, messages: Sequence[bytes]) -> None:
        """Send the messages (one datagram each over UDP; octet-counted frames otherwise).

        Raises OSError (ssl.SSLError included) when the connection cannot be made or breaks;
        the connection is closed then, and the next call reconnects.
        """
        try:
            if self.protocol == "udp":
                sock = self._connect()
                for message in messages:
                    sock.send(message[:MAX_UDP_BYTES])
                return
            self._send_framed(b"".join([b"%d %b" % (len(m), m) for m in messages]))
        except OSError:
            self.close()
            raise

    def send_framed(self, frames: bytes) -> None:
        """Send messages already octet-counted ("LEN SP MSG" each, RFC 6587/5425) in one write;
        TCP and TLS only. Raises OSError as `send` does."""
        if self.protocol == "udp":
            raise ValueError("octet-counted frames are for TCP and TLS, not UDP")
        try:
            self._send_framed(frames)
        except OSError:
            self.close()
            raise

    def _send_framed(self, frames: bytes) -> None:
        sock = self._connect()
        try:
            self._check_open(sock)
        except ConnectionResetError:  # closed while we were idle (a receiver restart): reconnect
            self.close()
            sock = self._connect()
        sock.sendall(frames)
        self._check_open(sock)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self.protocol == "udp":
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family[0], socket.SOCK_DGRAM)
            sock.connect(family[4])
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self._context is not None:
                try:
                    sock = self._context.wrap_socket(sock, server_hostname=self.server_name)
                except BaseException:
                    sock.close()
                    raise
        self._sock = sock
        return sock

    def _check_open(self, sock: socket.socket) -> None:
        # A receiver never writes to a syslog sender: anything readable is its EOF (or a TLS alert).
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return
        sock.setblocking(False)
        try:
            data = sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return  # a TLS record that is not application data (a session ticket): still open
        finally:
            sock.settimeout(self.timeout)
        if not data:
            raise ConnectionResetError(f"{self.where} closed the connection")

    def close(self) -> None:
        """Close the connection (the next send reconnects)."""
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(OSError):
                sock.close()
