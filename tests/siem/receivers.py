"""A real loopback HTTP receiver that can misbehave: answer a status, hang, or close mid-request.

    receiver = HttpReceiver()              # 200 with an Elasticsearch-style _bulk answer
    receiver.mode = "status:503"           # or "hang", "close", "bulk-refuse", "ok"
    receiver.wait_for(3)                   # bounded wait for 3 accepted requests (Request objects)
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.policy.receivers import _Collector


@dataclass
class Request:
    """One request the receiver accepted."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        """The body as JSON lines (NDJSON: Elasticsearch _bulk)."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


class HttpReceiver(_Collector):
    """Accepts POSTs on 127.0.0.1; `mode` says how it answers; `accepted` holds what it took (200)."""

    def __init__(self, mode: str = "ok", tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate, key) to serve HTTPS with."""
        super().__init__()
        self.mode = mode
        self.attempts = 0
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go in two writes: with Nagle's algorithm a kept-alive client would wait
            # for the delayed ACK (40 ms) on every answer, which Elasticsearch and Splunk do not make it do.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                outer.attempts += 1
                mode = outer.mode
                length = int(self.headers.get("Content-Length", "0"))
                if mode == "close":  # read half the body, then drop the connection
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = self.rfile.read(length)
                if mode == "hang":
                    outer.release.wait(60)
                    self.close_connection = True
                    return
                if mode.startswith("status:"):
                    self._answer(int(mode.split(":")[1]), b'{"error": "refused"}')
                    return
                if mode == "bulk-refuse":  # 200, but the cluster refused an item (a mapping conflict)
                    item = {"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}}
                    self._answer(200, json.dumps({"errors": True, "items": [item]}).encode())
                    return
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                answer: dict[str, Any] = {"text": "Success", "code": 0}
                if self.path.endswith("/_bulk"):  # one answer per action line (counted, not parsed)
                    items = [{"create": {"status": 201}}] * (body.count(b"\n") // 2)
                    answer = {"took": 1, "errors": False, "items": items}
                outer.add(request)
                self._answer(200, json.dumps(answer).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls[0], tls[1])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def accepted(self) -> list[Request]:
        """The requests answered 200, in order."""
        return list(self.received)

    def close(self) -> None:
        """Stop the server (hanging handlers are released)."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
