"""Real loopback receivers for alert sinks: webhook (http.server), syslog UDP/TCP, SMTP.

Each runs in a daemon thread, collects what it got in `.received`, and offers `wait_for(n)`
(bounded polling). Reusable by the end-to-end tests.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
import time
from typing import Any


class _Collector:
    def __init__(self) -> None:
        self.received: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.received.append(item)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Any]:
        """Block until `n` items arrived (or timeout); returns what arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.received)


class WebhookReceiver(_Collector):
    """POST JSON receiver; answers `fail_first` requests with 503 (to exercise retries)."""

    def __init__(self, fail_first: int = 0, port: int = 0) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.attempts = 0
        self.release = threading.Event()
        self.release.set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.release.wait(30)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.add({"json": json.loads(body), "content_type": self.headers.get("Content-Type")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop the server."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class SyslogUdpReceiver(_Collector):
    """Receives syslog datagrams."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except OSError:
                return
            self.add(data.decode())

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class SyslogTcpReceiver(_Collector):
    """Receives RFC 6587 octet-counted syslog frames over TCP."""

    def __init__(self) -> None:
        super().__init__()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    length = b""
                    while not length.endswith(b" "):
                        ch = self.rfile.read(1)
                        if not ch:
                            return
                        length += ch
                    outer.add(self.rfile.read(int(length)).decode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop the server."""
        self.server.shutdown()
        self.server.server_close()


class SmtpReceiver(_Collector):
    """A minimal SMTP server (HELO/EHLO, MAIL, RCPT, DATA, QUIT); collects (sender, rcpts, message)."""

    def __init__(self) -> None:
        super().__init__()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, text: str) -> None:
                self.wfile.write(text.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 test ESMTP")
                sender, rcpts = "", []
                while True:
                    line = self.rfile.readline().decode().rstrip("\r\n")
                    if not line:
                        return
                    verb = line.split(" ", 1)[0].upper()
                    if verb in ("HELO", "EHLO"):
                        self.reply("250 test")
                    elif verb == "MAIL":
                        sender = line.split(":", 1)[1].strip(" <>")
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        rcpts.append(line.split(":", 1)[1].strip(" <>"))
                        self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 go on")
                        lines = []
                        while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                            lines.append(data[1:] if data.startswith("..") else data)
                        outer.add((sender, rcpts, "".join(lines)))
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop the server."""
        self.server.shutdown()
        self.server.server_close()
