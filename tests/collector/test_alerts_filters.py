"""`exfilguard alerts --since` takes the times and durations `export --since` takes, and `--host`,
`--user`, `--device-serial` filter, on both real stores (in-process through the CLI's main, and once as
a process).

`--since 24h` used to be compared as a string with the stored times and silently listed nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import admin as cli
from collector.store import Store, open_store
from tests.helpers import run_cli

NOW = dt.datetime.now(dt.UTC)


def _ecs(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# id, age, host, user, device serial
ALERTS = [
    ("al-10d", dt.timedelta(days=10), "ws-1", r"alice\u0000", "EG-0001"),  # a backslash, not a NUL
    ("al-30h", dt.timedelta(hours=30), "ws-2", "bob", "EG-0002"),
    ("al-2h", dt.timedelta(hours=2), "ws-1", "bob", ""),
    ("al-5m", dt.timedelta(minutes=5), "ws-3", "mallory\x00", "EG-0001"),  # a NUL from an endpoint
]


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    sqlite = request.param == "sqlite"
    location = str(tmp_path / "collector.db") if sqlite else request.getfixturevalue("pg_url")
    path = tmp_path / "collector.yaml"
    path.write_text(f"store: '{location}'\nstate_dir: {tmp_path / 'state'}\n")
    store: Store = open_store(location)
    try:
        for alert_id, age, host, user, serial in ALERTS:
            body = {
                "id": alert_id,
                "@timestamp": _ecs(NOW - age),
                "policy.id": "usb-copy-database",
                "severity": "high",
                "summary": f"{user} on {host}",
                "host.name": host,
                "user.name": user,
                "evidence": [],
            }
            if serial:
                body["device.serial"] = serial
            store.add_alert(body)
    finally:
        store.close()
    yield path


@pytest.fixture
def ids(config: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., list[str]]:
    def listed(*args: str) -> list[str]:
        assert cli.main(["alerts", "--config", str(config), "--json", *args]) == 0
        return [a["id"] for a in json.loads(capsys.readouterr().out)]

    return listed


def test_since_24h_as_the_admin_types_it(config: Path) -> None:
    done = run_cli("alerts", "--config", str(config), "--since", "24h", "--user", "bob")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == ["al-2h"]


def test_since_takes_durations_and_iso_times(ids: Callable[..., list[str]]) -> None:
    assert ids("--since", "24h") == ["al-2h", "al-5m"]
    assert ids("--since", "2d") == ["al-30h", "al-2h", "al-5m"]
    assert ids("--since", "90m") == ["al-5m"]
    assert ids("--since", "30d") == [a[0] for a in ALERTS]
    three_hours_ago = NOW - dt.timedelta(hours=3)
    assert ids("--since", three_hours_ago.strftime("%Y-%m-%dT%H:%M:%SZ")) == ["al-2h", "al-5m"]
    # The same moment with an offset, and a naive time (UTC).
    berlin = three_hours_ago.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert ids("--since", berlin.isoformat()) == ["al-2h", "al-5m"]
    assert ids("--since", three_hours_ago.replace(tzinfo=None).isoformat()) == ["al-2h", "al-5m"]
    assert ids("--since", (NOW + dt.timedelta(days=1)).date().isoformat()) == []


@pytest.mark.parametrize("bad", ["yesterday", "24 hours", "99999999999d", "2026-13-01", ""])
def test_a_bad_since_is_a_usage_error(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:  # refused before any config or store is read
        cli.main(["alerts", "--config", str(tmp_path / "absent.yaml"), "--since", bad])
    assert caught.value.code == 2
    assert "--since" in capsys.readouterr().err


def test_host_user_and_device_filters(ids: Callable[..., list[str]]) -> None:
    assert ids("--host", "ws-1") == ["al-10d", "al-2h"]
    assert ids("--user", "bob") == ["al-30h", "al-2h"]
    assert ids("--device-serial", "EG-0001") == ["al-10d", "al-5m"]
    assert ids("--host", "ws-1", "--host", "ws-3") == ["al-10d", "al-2h", "al-5m"]
    assert ids("--user", "bob", "--host", "ws-1", "--since", "24h") == ["al-2h"]
    assert ids("--user", r"alice\u0000") == ["al-10d"]
    assert ids("--host", "ws-3") == ["al-5m"]  # a NUL in its user name breaks no filter
    assert ids("--user", "' OR 1=1 --") == []
    assert ids("--device-serial", "none-such") == []
