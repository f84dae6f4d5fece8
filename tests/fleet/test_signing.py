"""One signing identity per fleet: a collector whose key differs from a live collector's (as the
leases in the store record them) says so at start, and `exfilguard key export` warns (with the key
copied as docs/deploy.md says, tests/fleet/test_presence.py, nothing is said)."""

from __future__ import annotations

import time
from pathlib import Path

from admin.agents import format_collectors
from collector.evidence import keys
from collector.store import open_store
from common.ecstime import ecs_time_at
from tests.helpers import run_cli, start_collector, wait_for, write_collector_config


def _lease(store_path: Path, name: str, fingerprint: str) -> None:
    """Another collector of the fleet, alive now, signing with `fingerprint`."""
    store = open_store(str(store_path))
    try:
        now = time.time()
        store.renew_lease(name, "10.0.0.2:50051", ecs_time_at(now), ecs_time_at(now - 15), start=True,
                          signing_key=fingerprint)  # fmt: skip
    finally:
        store.close()


def test_a_collector_signing_with_another_key_than_the_fleet_is_named(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path)
    mine = keys.load_or_create(tmp_path).public.fingerprint()
    _lease(tmp_path / "collector.db", "collector-b", "ab" * 32)
    with start_collector(config) as collector:
        wait_for(lambda: "signs exports with key" in collector.log(), 10, "the ERROR at start")
        assert "collector collector-b signs exports with key abababababababab" in collector.log()
        assert collector.stop() == 0
    exported = run_cli("key", "export", "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    assert f"warning: collector collector-b of this fleet signs with key {'ab' * 32}" in exported.stderr
    assert f"raw key): {mine}" in exported.stderr and exported.stderr.count("warning:") == 1
    # `exfilguard agents` lists the fleet's collectors under its table: both leases, both live.
    store = open_store(str(tmp_path / "collector.db"), readonly=True)
    try:
        leases = store.fleet_collectors()
    finally:
        store.close()
    listed = format_collectors(leases).splitlines()
    assert len(listed) == 3 and "collector-b" in listed[1] + listed[2]
    assert all(" live " in line for line in listed[1:])
    later = format_collectors(leases, now=time.time() + 60).splitlines()  # no renewal for a minute
    assert all(" gone " in line for line in later[1:])
