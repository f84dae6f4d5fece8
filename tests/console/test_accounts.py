"""Console accounts and one-time login links through the CLI (`users add`, `console link`), on both
real stores: hashes only, links used once and only in time, sessions bound to the account's role."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import admin as cli
from collector.console.accounts import AccountBook
from collector.console.errors import LoginRefused
from collector.console.logins import LoginBook, token_hash
from collector.store import open_store
from tests.helpers import run_cli

PASSWORD = "correct horse battery staple"  # noqa: S105 (a test account)


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    location = str(tmp_path / "c.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    open_store(location).close()
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"store: '{location}'\nstate_dir: {tmp_path / 'state'}\npolicies: []\n"
        "console: {listen: '127.0.0.1:8443'}\n"
    )
    yield path


@pytest.fixture
def exfilguard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """The CLI in this process (each process start costs seconds on a loaded machine): code, out, err."""

    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _store(config: Path) -> str:
    return str(config.read_text().split("store: '")[1].split("'")[0])


def test_users_add_hashes_the_password_from_stdin_and_link_logs_in_once(
    config: Path, exfilguard: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = exfilguard(
        "users", "add", "carol", "--role", "officer", "--config", str(config), stdin=PASSWORD + "\n"
    )
    assert code == 0, err
    code, _, err = exfilguard(
        "users", "add", "carol", "--role", "admin", "--config", str(config), stdin=PASSWORD
    )
    assert code == 2 and "exists already" in err
    code, _, err = exfilguard(
        "users", "add", "bob", "--role", "auditor", "--config", str(config), stdin="short\n"
    )
    assert code == 2 and "password: 10 to 1024 characters, got 5" in err
    with pytest.raises(SystemExit):
        exfilguard("users", "add", "bob", "--role", "root", "--config", str(config), stdin=PASSWORD)
    code, out, _ = exfilguard("users", "list", "--json", "--config", str(config))
    assert [(u["name"], u["role"]) for u in json.loads(out)] == [("carol", "officer")]

    store = open_store(_store(config))
    try:
        with store.domain().transaction() as tx:
            (stored,) = tx.query("SELECT pw_hash FROM console_users WHERE name = ?", ("carol",))
        assert PASSWORD not in str(stored[0]) and str(stored[0]).startswith("$argon2id$")
        accounts = AccountBook(store.domain())
        assert accounts.authenticate("carol", PASSWORD).role == "officer"
        with pytest.raises(LoginRefused):
            accounts.authenticate("carol", PASSWORD + "x")
    finally:
        store.close()

    code, out, err = exfilguard("console", "link", "--user", "carol", "--json", "--config", str(config))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["url"].startswith("http://127.0.0.1:8443/link/")
    expires = dt.datetime.fromisoformat(doc["expires"].replace("Z", "+00:00"))
    assert dt.timedelta(minutes=9) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=10)
    token = doc["url"].rsplit("/", 1)[1]

    store = open_store(_store(config))
    try:
        logins = LoginBook(store.domain())
        with store.domain().transaction() as tx:
            assert tx.query("SELECT user_name FROM console_links WHERE token_hash = ?", (token_hash(token),))
            assert not tx.query("SELECT 1 FROM console_links WHERE token_hash = ?", (token,))
        session = logins.redeem_link(token)
        assert (session.user, session.role) == ("carol", "officer")
        assert logins.session(session.token) == session
        with pytest.raises(LoginRefused, match="used already"):
            logins.redeem_link(token)
        with pytest.raises(LoginRefused, match="unknown"):
            logins.redeem_link(token[:-2] + "xx")
        expired, _ = logins.issue_link("carol", seconds=-1)
        with pytest.raises(LoginRefused, match="expired"):
            logins.redeem_link(expired)
        logins.close_session(session.token)
        assert logins.session(session.token) is None
    finally:
        store.close()

    code, _, err = exfilguard("console", "link", "--user", "nobody", "--config", str(config))
    assert code == 2 and "no such console user: nobody" in err


def test_users_add_and_link_as_processes(tmp_path: Path) -> None:
    """The password really comes from the process's stdin."""
    open_store(str(tmp_path / "c.db")).close()
    path = tmp_path / "collector.yaml"
    path.write_text(f"store: {tmp_path / 'c.db'}\nstate_dir: {tmp_path}\npolicies: []\n")
    added = run_cli("users", "add", "dave", "--role", "auditor", "--config", str(path), input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    store = open_store(str(tmp_path / "c.db"))
    try:
        assert AccountBook(store.domain()).authenticate("dave", PASSWORD).role == "auditor"
    finally:
        store.close()


def test_link_needs_a_console_in_the_config(
    tmp_path: Path, exfilguard: Callable[..., tuple[int, str, str]]
) -> None:
    open_store(str(tmp_path / "c.db")).close()
    path = tmp_path / "collector.yaml"
    path.write_text(f"store: {tmp_path / 'c.db'}\nstate_dir: {tmp_path}\npolicies: []\n")
    code, _, err = exfilguard("console", "link", "--user", "carol", "--config", str(path))
    assert code == 2 and "no console is configured" in err
