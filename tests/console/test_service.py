"""The collector serves the console when collector.yaml has `console:` (and only then), on its own
event loop next to the agents' gRPC; a console off loopback needs TLS."""

from __future__ import annotations

import asyncio
import http.client
import ssl
from pathlib import Path

import pytest

from collector import config as collector_config
from collector.config import Console, ConsoleTls
from collector.console.accounts import AccountBook
from collector.server import Collector
from collector.store import open_store
from collector.store.sqlite import SqliteStore
from collector.tls.pki import CertificateAuthority
from common.yamlfile import YamlError
from tests.console.running import PASSWORD, RunningConsole
from tests.helpers import write_collector_config


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


async def _serve(config_path: Path) -> tuple[int, str]:
    config = collector_config.load(config_path)
    store = SqliteStore(config.store)
    collector = Collector(config, store)
    await collector.start()
    try:
        assert collector.console is not None and collector.console.port > 0
        return await asyncio.to_thread(_get, collector.console.port, "/login")
    finally:
        await collector.stop()
        store.close()


def test_the_collector_serves_the_console_it_is_configured_with(tmp_path: Path) -> None:
    path = write_collector_config(tmp_path, console={"listen": "127.0.0.1:0"})
    status, page = asyncio.run(_serve(path))
    assert status == 200 and 'action="/login"' in page
    config = collector_config.load(write_collector_config(tmp_path / "plain"))
    assert config.console is None
    store = SqliteStore(config.store)
    try:
        assert Collector(config, store).console is None
    finally:
        store.close()


def test_a_console_off_loopback_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(YamlError, match="the console needs tls"):
        collector_config.load(write_collector_config(tmp_path, console={"listen": "0.0.0.0:8443"}))
    config = collector_config.load(
        write_collector_config(
            tmp_path / "tls", console={"listen": "0.0.0.0:8443", "tls": {"cert": "c.pem", "key": "k.pem"}}
        )
    )
    assert config.console is not None and config.console.tls is not None
    assert config.console.tls.cert == str(tmp_path / "tls" / "c.pem")
    assert config.console.base_url() == "https://0.0.0.0:8443"


def test_over_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    ca.init_ca()
    issued = ca.issue_server("127.0.0.1")
    assert issued.cert_path is not None and issued.key_path is not None
    store = open_store(str(tmp_path / "c.db"))
    try:
        AccountBook(store.domain()).add("carol", "officer", PASSWORD, by="test")
    finally:
        store.close()
    tls = ConsoleTls(cert=str(issued.cert_path), key=str(issued.key_path))
    config = Console(listen="127.0.0.1:0", tls=tls)
    console = RunningConsole(str(tmp_path / "c.db"), tmp_path / "state", config)
    console.start()
    try:
        trust = ssl.create_default_context(cafile=str(ca.ca_cert_path))
        connection = http.client.HTTPSConnection("127.0.0.1", console.server.port, timeout=10, context=trust)
        token = console.link("carol").rsplit("/", 1)[1]
        connection.request("GET", f"/link/{token}")
        answer = connection.getresponse()
        answer.read()
        connection.close()
        assert answer.status == 303
        cookie = answer.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        with pytest.raises(http.client.RemoteDisconnected):  # plain HTTP on the TLS port gets nothing
            _get(console.server.port, "/login")
    finally:
        console.stop()
