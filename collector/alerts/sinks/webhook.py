"""WebhookSink: POSTs each alert (as JSON, or shaped by a template); retried with backoff on network
errors, 429 and 5xx. Extra headers may carry secrets (read from a file or the environment at
start, never logged: errors name the URL and the status only)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from collector import __version__
from collector.alerts.errors import SinkError
from collector.alerts.secrets import tls_context
from collector.alerts.sinks.base import QueuedSink
from collector.alerts.templates import Template


class WebhookSink(QueuedSink):
    """HTTP(S) POST of the alert to `url`."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        max_retries: int = 8,
        *,
        headers: Mapping[str, str] | None = None,
        template: Template | None = None,
        ca: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s), got {url!r}")
        self.url = url
        self.timeout = timeout
        self.template = template or Template.build(None)
        self._headers = dict(headers or {})
        # https: verified against `ca`, else the system's trust store (a self-signed HEC, say)
        self._context = tls_context(ca, "webhook") if url.startswith("https://") else None
        super().__init__(max_retries)

    def __repr__(self) -> str:  # never the headers: they may hold tokens
        return f"WebhookSink({self.url!r})"

    def deliver(self, alert: dict[str, Any]) -> None:
        """One POST; 2xx is success, 429/5xx and network errors are retried, other 4xx are not."""
        body, content_type = self.template.render(alert, self.document(alert))
        headers = {"Content-Type": content_type, "User-Agent": f"exfilguard/{__version__}", **self._headers}
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url, data=body, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:  # noqa: S310
                response.read(1 << 16)
        except urllib.error.HTTPError as exc:
            retry = exc.code == 429 or exc.code >= 500
            raise SinkError(self.name, f"HTTP {exc.code} from the webhook", retry=retry) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(self.name, f"cannot reach the webhook: {reason}") from exc
