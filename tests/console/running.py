"""A console on a real store for the console tests: a seeded theft (device, reads, a write and an
identified copy to a stick), alerts citing it, three accounts, and the console served from a
thread of its own on a free loopback port."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from collector.config import Console
from collector.console.accounts import AccountBook
from collector.console.logins import LoginBook
from collector.console.service import ConsoleServer
from collector.store import Store, open_store
from common.ecstime import ecs_time
from protos import exfilguard_pb2 as pb
from tests.helpers import make_event

PASSWORD = "correct horse battery staple"  # noqa: S105 (test accounts)
ACCOUNTS = {"carol": "officer", "dave": "auditor", "erin": "admin"}
AGENT = "agent-alice-ws"
SERIAL = "EG-STICK-0001"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _at(event: pb.Event, moment: dt.datetime) -> pb.Event:
    event.timestamp.FromDatetime(moment)
    return event


def seed(store: Store, *, accounts: bool = True) -> dict[str, list[str]]:
    """A theft by alice two days ago and a low alert for bob (and ACCOUNTS); the alert ids by user."""
    device = pb.Device(
        serial=SERIAL, vendor="SanDisk", model="Cruzer", vendor_id="0781", product_id="5567", bus="usb"
    )
    alice = pb.User(id="1000", name="alice")
    host = pb.Host(name="ws-alice")
    when = NOW - dt.timedelta(days=2)
    events = [
        _at(make_event(AGENT, 1, "device.attach", device=device, user=alice, host=host), when),
        _at(make_event(AGENT, 2, "file.read", user=alice, host=host), when),
        _at(
            make_event(
                AGENT, 3, "file.write", device=device, user=alice, host=host,
                file=pb.File(path="/media/alice/STICK/holiday.jpg", size=5 << 20),
            ),
            when + dt.timedelta(seconds=5),
        ),
        _at(
            make_event(
                AGENT, 4, "file.copy", device=device, user=alice, host=host,
                file=pb.File(path="/media/alice/STICK/holiday.jpg", size=5 << 20),
                exfilguard=pb.Extensions(
                    source=pb.Source(path="/srv/db/customers.csv", tags=["database"]),
                    copy=pb.Copy(method=["fingerprint"], identified_by="exact", confidence=1.0),
                ),
            ),
            when + dt.timedelta(seconds=6),
        ),
    ]  # fmt: skip
    store.ingest(AGENT, events)
    ids = [e.event.id for e in events]
    alerts = {
        "alice": ["al-alice-copy", "al-alice-read"],
        "bob": ["al-bob-usb"],
    }
    store.add_alert(
        {
            "id": "al-alice-copy", "@timestamp": ecs_time(when + dt.timedelta(seconds=7)),
            "policy.id": "usb-copy-database", "policy.title": "Database copied to removable media",
            "severity": "high", "summary": "alice copied /srv/db/customers.csv to stick EG-STICK-0001",
            "host.name": "ws-alice", "user.name": "alice", "agent.id": AGENT, "device.serial": SERIAL,
            "evidence": ids[2:4], "count": 1,
        }
    )  # fmt: skip
    store.add_alert(
        {
            "id": "al-alice-read", "@timestamp": ecs_time(when + dt.timedelta(seconds=2)),
            "policy.id": "mass-read", "severity": "medium", "summary": "alice read tagged files",
            "host.name": "ws-alice", "user.name": "alice", "agent.id": AGENT,
            "evidence": ids[1:2], "count": 1,
        }
    )  # fmt: skip
    store.add_alert(
        {
            "id": "al-bob-usb", "@timestamp": ecs_time(NOW - dt.timedelta(hours=1)),
            "policy.id": "unknown-usb", "severity": "low", "summary": "bob plugged in an unknown stick",
            "host.name": "ws-bob", "user.name": "bob", "device.serial": "EG-OTHER",
            "evidence": [], "count": 1,
        }
    )  # fmt: skip
    now = ecs_time(dt.datetime.now(dt.UTC))  # not NOW: a long test session may have begun long ago
    store.upsert_agent(AGENT, host="ws-alice", version="0.1.0", connected=True, seen=now)
    store.renew_lease("collector-a", "127.0.0.1:50051", now, now, start=True, signing_key="SHA256:test")
    book = AccountBook(store.domain())
    for name, role in ACCOUNTS.items() if accounts else ():
        book.add(name, role, PASSWORD, by="test")
    return alerts


@dataclass
class RunningConsole:
    """A console served from a thread with its own event loop."""

    location: str
    state_dir: Path
    config: Console = field(default_factory=lambda: Console(listen="127.0.0.1:0"))
    server: ConsoleServer = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)

    def start(self) -> None:
        """Serve on a free port; returns when it listens."""
        self.server = ConsoleServer(self.config, self.location, str(self.state_dir))
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.server.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="console", daemon=True)
        self._thread.start()
        if not ready.wait(60):
            raise TimeoutError("the console did not start within 60 s")

    def stop(self) -> None:
        """Stop serving and close its stores."""
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    @property
    def url(self) -> str:
        """The console's base URL."""
        return f"http://127.0.0.1:{self.server.port}"

    def link(self, user: str, seconds: int = 600) -> str:
        """A one-time login URL, as `exfilguard console link` prints it."""
        store = open_store(self.location)
        try:
            token, _ = LoginBook(store.domain()).issue_link(user, seconds)
        finally:
            store.close()
        return f"{self.url}/link/{token}"


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: http.client.HTTPMessage
    body: str


class Browserless:
    """A plain HTTP client with one cookie jar: for access checks a browser would not let us make."""

    def __init__(self, console: RunningConsole) -> None:
        self.console = console
        self.cookie = ""

    def request(self, method: str, path: str, form: dict[str, str | list[str]] | None = None,
                headers: dict[str, str] | None = None) -> Answer:  # fmt: skip
        """Send one request (a form is url-encoded); keeps the session cookie it is given."""
        connection = http.client.HTTPConnection("127.0.0.1", self.console.server.port, timeout=30)
        try:
            sent = dict(headers or {})
            if self.cookie:
                sent["Cookie"] = self.cookie
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form, doseq=True)
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            for value in response.headers.get_all("Set-Cookie") or []:
                self.cookie = value.split(";", 1)[0]
            return Answer(response.status, response.headers, text)
        finally:
            connection.close()

    def login(self, user: str) -> str:
        """Log in through a one-time link; the session's CSRF token (read off the queue page)."""
        link = self.console.link(user)
        answer = self.request("GET", urllib.parse.urlsplit(link).path)
        assert answer.status == 303, answer.body
        page = self.request("GET", "/alerts").body
        return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
