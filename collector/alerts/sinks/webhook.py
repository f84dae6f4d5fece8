"""WebhookSink: POSTs each alert as JSON; retried with backoff on network errors, 429 and 5xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from collector import __version__
from collector.alerts.errors import SinkError
from collector.alerts.sinks.base import QueuedSink


class WebhookSink(QueuedSink):
    """HTTP(S) POST of the alert JSON object to `url`."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 5.0, max_retries: int = 8) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s), got {url!r}")
        self.url = url
        self.timeout = timeout
        super().__init__(max_retries)

    def deliver(self, alert: dict[str, Any]) -> None:
        """One POST; 2xx is success, 429/5xx and network errors are retried, other 4xx are not."""
        body = json.dumps(alert, sort_keys=True).encode()
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"exfilguard/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read(1 << 16)
        except urllib.error.HTTPError as exc:
            retry = exc.code == 429 or exc.code >= 500
            raise SinkError(self.name, f"HTTP {exc.code} from the webhook", retry=retry) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(self.name, f"cannot reach the webhook: {reason}") from exc
