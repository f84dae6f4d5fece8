"""Who may do what in the console, over real HTTP: no session, each role, CSRF, other sites' forms,
bad, used and expired links, rate-limited passwords, cookie flags and security headers."""

from __future__ import annotations

import json
import urllib.parse

from collector.console.limiter import LoginLimiter
from collector.store import open_store
from tests.console.running import PASSWORD, Browserless, RunningConsole


def _status_of(console: RunningConsole, alert_id: str) -> str:
    store = open_store(console.location, readonly=True)
    try:
        alert = store.alert(alert_id)
        assert alert is not None
        return str(alert["status"])
    finally:
        store.close()


def test_without_a_session_nothing_is_shown_or_changed(console: RunningConsole) -> None:
    client = Browserless(console)
    for path in ("/alerts", "/alerts/al-alice-copy", "/cases", "/fleet", "/audit", "/timeline/user/alice"):
        answer = client.request("GET", path)
        assert answer.status == 302, path
        target = urllib.parse.urlsplit(answer.headers["Location"])
        assert target.path == "/login" and urllib.parse.parse_qs(target.query)["next"] == [path]
    refused = client.request("POST", "/alerts/triage", {"id": "al-bob-usb", "action": "close", "note": "x"})
    assert refused.status == 401
    package = client.request("GET", "/cases/C-00000000/package")
    assert package.status == 302
    assert _status_of(console, "al-bob-usb") == "open"


def test_roles(console: RunningConsole) -> None:
    auditor = Browserless(console)
    csrf = auditor.login("dave")
    assert auditor.request("GET", "/alerts").status == 200
    assert auditor.request("GET", "/audit").status == 200
    assert "<table" in auditor.request("GET", "/alerts/al-alice-copy").body
    refused = auditor.request("POST", "/alerts/triage", {"csrf": csrf, "id": "al-bob-usb", "action": "close",
                                                           "note": "not mine to close"})  # fmt: skip
    assert refused.status == 403 and "a auditor may not do this" in refused.body
    assert auditor.request("POST", "/cases", {"csrf": csrf, "title": "no"}).status == 403
    assert 'id="triage"' not in auditor.request("GET", "/alerts/al-bob-usb").body  # no triage form shown
    fleet = auditor.request("GET", "/fleet").body
    assert "agent-alice-ws" in fleet and "ws-alice" in fleet and "ok: <strong>1</strong>" in fleet
    assert "collector-a" in fleet and "running" in fleet and "SHA256:test" in fleet
    exported = auditor.request("GET", "/audit.jsonl")
    assert exported.status == 200
    entries = [json.loads(line) for line in exported.body.splitlines()]
    logins = [e for e in entries if e["user"] == "dave" and e["action"] == "login"]
    assert logins and logins[-1]["detail"] == "one-time link"
    assert any(
        e["user"] == "dave" and e["action"] == "view" and e["target"] == "al-alice-copy" for e in entries
    )

    officer = Browserless(console)
    officer.login("carol")
    assert officer.request("GET", "/audit").status == 403
    assert officer.request("GET", "/audit.jsonl").status == 403
    admin = Browserless(console)
    admin.login("erin")
    assert admin.request("GET", "/audit").status == 200
    assert _status_of(console, "al-bob-usb") == "open"


def test_csrf_other_sites_and_the_required_note(console: RunningConsole) -> None:
    officer = Browserless(console)
    csrf = officer.login("carol")
    form: dict[str, str | list[str]] = {"id": "al-bob-usb", "action": "close", "status": "false_positive"}
    assert officer.request("POST", "/alerts/triage", {**form, "note": "no token"}).status == 403
    assert (
        officer.request("POST", "/alerts/triage", {**form, "note": "bad", "csrf": csrf[:-1] + "x"}).status
        == 403
    )
    other_site = officer.request(
        "POST",
        "/alerts/triage",
        {**form, "note": "n", "csrf": csrf},
        headers={"Origin": "http://evil.example"},
    )
    assert other_site.status == 403
    unknown = officer.request(
        "POST", "/alerts/triage", {**form, "id": ["al-bob-usb", "al-gone"], "note": "n", "csrf": csrf}
    )
    assert unknown.status == 404 and "no such alert: al-gone (nothing was changed)" in unknown.body
    assert officer.request("GET", "/alerts/al-gone").status == 404
    no_note = officer.request("POST", "/alerts/triage", {**form, "note": "  ", "csrf": csrf})
    assert no_note.status == 400 and "a note is required" in no_note.body
    assert _status_of(console, "al-bob-usb") == "open"
    done = officer.request("POST", "/alerts/triage", {**form, "note": "IT's own test stick", "csrf": csrf})
    assert done.status == 303
    assert _status_of(console, "al-bob-usb") == "false_positive"
    assigned = officer.request(
        "POST",
        "/alerts/triage",
        {"id": "al-bob-usb", "action": "assign", "assignee": "erin", "note": "yours", "csrf": csrf},
    )
    assert assigned.status == 303 and _status_of(console, "al-bob-usb") == "false_positive"
    row = officer.request("GET", "/alerts/rows?status=false_positive").body
    assert '<td class="assigned">erin</td>' in row
    reopened = officer.request(
        "POST", "/alerts/triage", {"id": "al-bob-usb", "action": "reopen", "note": "was not", "csrf": csrf}
    )
    assert reopened.status == 303 and _status_of(console, "al-bob-usb") == "open"


def test_bad_used_and_expired_links(fresh_limits: RunningConsole) -> None:
    console = fresh_limits
    client = Browserless(console)
    bad = client.request("GET", "/link/not-a-real-token")
    assert bad.status == 403 and "unknown login link" in bad.body and not client.cookie
    expired = client.request("GET", urllib.parse.urlsplit(console.link("carol", seconds=-1)).path)
    assert expired.status == 403 and "expired" in expired.body and not client.cookie
    link = urllib.parse.urlsplit(console.link("carol")).path
    first = client.request("GET", link)
    assert first.status == 303 and first.headers["Location"] == "/alerts"
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    again = Browserless(console).request("GET", link)
    assert again.status == 403 and "used already" in again.body
    page = client.request("GET", "/alerts")
    assert page.status == 200
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "same-origin"


def test_passwords_are_rate_limited(fresh_limits: RunningConsole) -> None:
    client = Browserless(fresh_limits)
    for _ in range(5):
        wrong = client.request("POST", "/login", {"name": "carol", "password": "wrong password!"})
        assert wrong.status == 401 and "wrong name or password" in wrong.body
    limited = client.request("POST", "/login", {"name": "carol", "password": PASSWORD})
    assert limited.status == 429 and "too many failed logins" in limited.body and not client.cookie
    assert int(limited.headers["Retry-After"]) > 0
    assert fresh_limits.server.state is not None
    fresh_limits.server.state.limiter = LoginLimiter()  # the window passed
    right = client.request(
        "POST", "/login", {"name": "carol", "password": PASSWORD, "next": "//evil.example/"}
    )
    assert right.status == 303 and right.headers["Location"] == "/alerts" and client.cookie


def test_bad_page_parameters_are_named(console: RunningConsole) -> None:
    client = Browserless(console)
    client.login("dave")
    bad = client.request("GET", "/alerts?since=yesterday")
    assert bad.status == 400 and "since: not a time like 24h" in bad.body
    assert "sort: one of" in client.request("GET", "/alerts?sort=id;drop").body
    assert "a range of at most 366 days" in client.request("GET", "/timeline/user/alice?since=1000d").body
    listed = client.request("GET", "/alerts/rows?since=24h&status=open&status=closed")
    assert listed.status == 200
    assert 'data-id="al-bob-usb"' in listed.body and "al-alice-copy" not in listed.body  # two days old
