"""Where forwarded events go: Elasticsearch/OpenSearch `_bulk`, Splunk HEC, syslog over TLS.

Each destination takes a `Batch` of events and either returns (the destination has them) or
raises DeliveryError with a `reason` from REASONS (the metrics label). Nothing here retries:
the worker (worker.py) does, and keeps its cursor where it was until a batch is taken.

- `_bulk` uses `create` with the event id as `_id`: a batch sent again after a lost answer
  creates nothing twice (409 per item counts as delivered), and it works with data streams.
  Events the cluster refuses (a mapping conflict) fail the whole batch, so nothing is skipped.
- HEC gets one JSON event object per event, concatenated, sourcetype `exfilguard:event`.
- syslog gets one RFC 5424 message per event with the document as JSON, octet-counted.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from collector import __version__
from collector.alerts.secrets import tls_context
from collector.formats.ocsf import epoch_ms
from collector.forward.errors import DeliveryError
from collector.forward.syslog import FACILITY, SD_ID, SyslogTransport, sd_value

MAX_ANSWER_BYTES = 16 << 20  # a _bulk answer names every item


class Batch:
    """Stored events on their way out, in columns (an object per event cost more than sending it):
    each event's agent and sequence (in sequence order within each agent), the fields of its
    mapping a destination reads beside the document (formatted.FIELDS: event.id, @timestamp,
    host.name; None where absent) and its document's JSON."""

    __slots__ = ("agents", "docs", "hosts", "ids", "sequences", "times")

    def __init__(
        self,
        agents: list[str],
        sequences: list[int],
        *,
        ids: list[str],
        times: list[str | None],
        hosts: list[str | None],
        docs: list[bytes],
    ) -> None:
        if not len(agents) == len(sequences) == len(ids) == len(times) == len(hosts) == len(docs):
            raise ValueError("a batch's columns differ in length")
        self.agents, self.sequences, self.ids = agents, sequences, ids
        self.times, self.hosts, self.docs = times, hosts, docs

    def __len__(self) -> int:
        return len(self.docs)

    def last(self) -> dict[str, int]:
        """Each agent's last sequence in the batch: its cursor once the batch is delivered."""
        return dict(zip(self.agents, self.sequences, strict=True))

    def oldest(self) -> dict[str, str | None]:
        """Each agent's first event time in the batch (its oldest)."""
        return dict(zip(reversed(self.agents), reversed(self.times), strict=True))


class Destination(Protocol):
    """A place events are forwarded to."""

    where: str

    def deliver(self, batch: Batch) -> None:
        """Hand over the batch; return only when the destination has all of it (DeliveryError else)."""

    def close(self) -> None:
        """Release connections."""


class _Connection:
    """One kept-alive HTTP(S) connection to a destination, made again after any failure."""

    def __init__(self, url: str, timeout: float, context: ssl.SSLContext | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or "localhost"
        self.port = parts.port
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.context = context
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        """POST and return the answer's body for a 2xx; DeliveryError (with its reason) otherwise."""
        reused = self._conn is not None
        try:
            status, answer = self._exchange(body, headers)
        except (ConnectionError, http.client.RemoteDisconnected) as exc:
            self.close()
            if not reused:
                raise _network_error(self.url, exc) from exc
            try:  # the receiver closed the idle connection: once more on a new one
                status, answer = self._exchange(body, headers)
            except (OSError, http.client.HTTPException) as again:
                self.close()
                raise _network_error(self.url, again) from again
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise _network_error(self.url, exc) from exc
        if not 200 <= status < 300:
            reason = "http_4xx" if status < 500 else "http_5xx"
            raise DeliveryError(reason, f"HTTP {status} from {_safe(self.url)}")
        return answer

    def _exchange(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        conn = self._conn
        if conn is None:
            if self.context is not None:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn = conn
        conn.request("POST", self.target, body=body, headers=dict(headers))
        response = conn.getresponse()
        answer = response.read(MAX_ANSWER_BYTES)
        if not response.isclosed() or response.will_close:  # an answer too long, or the server's wish
            self.close()
        return response.status, answer

    def close(self) -> None:
        """Close the connection (the next post makes a new one)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def _network_error(url: str, cause: object) -> DeliveryError:
    if isinstance(cause, ssl.SSLError):
        return DeliveryError("tls", f"TLS with {_safe(url)} failed: {cause}")
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return DeliveryError("timeout", f"{_safe(url)} did not answer in time")
    return DeliveryError("connection", f"cannot reach {_safe(url)}: {cause}")


def _safe(url: str) -> str:
    """The URL without user info (a password in a URL must not reach the logs)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _with_path(url: str, path: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return url if parts.path not in ("", "/") else url.rstrip("/") + path


def _json_texts(texts: list[str]) -> list[bytes]:
    """Each text as a JSON string: one orjson call for all, cut at the commas between them (a
    comma inside one takes a call each)."""
    parts = orjson.dumps(texts)[1:-1].split(b",")
    if len(parts) == len(texts) and texts:
        return parts
    return [orjson.dumps(text) for text in texts]


_HEC_HEAD = b'{"source":"exfilguard","sourcetype":"exfilguard:event","event":'


class HttpDestination:
    """Elasticsearch / OpenSearch `_bulk` or Splunk HEC over HTTP(S)."""

    def __init__(
        self,
        kind: str,
        url: str,
        *,
        index: str = "exfilguard-events",
        headers: Mapping[str, str] | None = None,
        ca: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.kind = kind
        self.index = index
        self.timeout = timeout
        self.url = _with_path(url, "/services/collector/event" if kind == "splunk-hec" else "/_bulk")
        self.where = _safe(self.url)
        context = tls_context(ca, f"{kind} {self.where}") if url.startswith("https://") else None
        self._http = _Connection(self.url, timeout, context)
        content_type = "application/json" if kind == "splunk-hec" else "application/x-ndjson"
        self._headers = {"Content-Type": content_type, "User-Agent": f"exfilguard/{__version__}"}
        self._headers.update(headers or {})
        # {"create": {"_index": ..., "_id": ...}}, the id added per event
        self._action = orjson.dumps({"create": {"_index": index, "_id": None}})[: -len(b"null}}")]

    def __repr__(self) -> str:  # never the headers: they may hold tokens
        return f"HttpDestination({self.kind!r}, {self.where!r})"

    def deliver(self, batch: Batch) -> None:
        """One POST of the whole batch."""
        if self.kind == "splunk-hec":
            self._hec(batch)
        else:
            self._bulk(batch)

    def _bulk(self, batch: Batch) -> None:
        action = self._action
        ids = _json_texts(batch.ids)
        body = b"".join([b"%b%b}}\n%b\n" % (action, i, doc) for i, doc in zip(ids, batch.docs, strict=True)])
        answer = self._http.post(body, self._headers)
        try:
            result = orjson.loads(answer)
        except orjson.JSONDecodeError as exc:
            raise DeliveryError("rejected", f"{self.where} answered something that is not JSON") from exc
        if not isinstance(result, dict):
            raise DeliveryError("rejected", f"{self.where} answered something that is not a _bulk result")
        if not result.get("errors"):
            return
        for entry in result.get("items", []):
            outcome: dict[str, Any] = next(iter(entry.values()), {}) if isinstance(entry, dict) else {}
            status = int(outcome.get("status", 0))
            if 200 <= status < 300 or status == 409:  # 409: created by an earlier try of this batch
                continue
            error = outcome.get("error", {})
            kind = error.get("type", "") if isinstance(error, dict) else str(error)
            reason = "http_5xx" if status >= 500 or status == 429 else "rejected"
            raise DeliveryError(reason, f"{self.where} refused event {outcome.get('_id')}: {status} {kind}")

    def _hec(self, batch: Batch) -> None:
        events = []
        for time, host, doc in zip(batch.times, batch.hosts, batch.docs, strict=True):
            # {"source": "exfilguard", "sourcetype": "exfilguard:event", "event": doc, "time": s, "host": h}
            event = [_HEC_HEAD, doc]
            millis = epoch_ms(time)
            if millis:
                event += [b',"time":', orjson.dumps(millis / 1000)]
            if host:
                event += [b',"host":', orjson.dumps(str(host))]
            event.append(b"}")
            events.append(b"".join(event))
        answer = self._http.post(b"\n".join(events), self._headers)
        try:
            code = orjson.loads(answer).get("code", 0)
        except (ValueError, AttributeError):
            code = 0  # HEC answers {"text": "Success", "code": 0}; a 2xx is what counts
        if code not in (0, None):
            raise DeliveryError("rejected", f"{self.where} answered HEC code {code}")

    def close(self) -> None:
        """Close the kept-alive connection."""
        self._http.close()


class SyslogDestination:
    """RFC 5424 messages carrying the document as JSON, over TLS (RFC 5425) or TCP."""

    def __init__(self, wire: SyslogTransport) -> None:
        self.wire = wire
        self.where = wire.where
        self.hostname = socket.gethostname()[:255].replace(" ", "_") or "-"
        pri = FACILITY * 8 + 6  # informational: an event, not an alert
        host = self.hostname.replace("%", "%%")
        # Filled per event: time, event id, agent id (both escaped as RFC 5424 asks), sequence.
        sd = f'[{SD_ID} eventId="%s" agentId="%s" sequence="%d"]'
        self._head = f"<{pri}>1 %s {host} exfilguard - EVENT {sd} "
        self._agents: dict[str, str] = {}  # agent id -> its escaped form (few agents, many events)

    def deliver(self, batch: Batch) -> None:
        """All messages in one write; DeliveryError when the connection fails or was closed."""
        head, agents = self._head, self._agents
        frames = []
        for agent_id, sequence, given_id, stamp, doc in zip(
            batch.agents, batch.sequences, batch.ids, batch.times, batch.docs, strict=True
        ):
            agent = agents.get(agent_id)
            if agent is None:
                if len(agents) >= 10_000:
                    agents.clear()
                agent = agents[agent_id] = sd_value(agent_id)
            event_id = given_id
            if '"' in event_id or "\\" in event_id or "]" in event_id:
                event_id = sd_value(event_id)
            # framed here, as the message is made (one pass, one join): "LEN SP MSG" (RFC 6587/5425)
            message = (head % (stamp or "-", event_id, agent, sequence)).encode()
            frames.append(b"%d %b%b" % (len(message) + len(doc), message, doc))
        try:
            self.wire.send_framed(b"".join(frames))
        except ssl.SSLCertVerificationError as exc:
            reason = f"certificate of {self.where} did not verify: {exc.verify_message}"
            raise DeliveryError("tls", reason) from exc
        except ssl.SSLError as exc:
            raise DeliveryError("tls", f"TLS with {self.where} failed: {exc}") from exc
        except TimeoutError as exc:
            raise DeliveryError("timeout", f"{self.where} did not take the batch in time") from exc
        except OSError as exc:
            raise DeliveryError("connection", f"cannot send to {self.where}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self.wire.close()
