"""Baselines, approvals and risk as the engine sees them: warm-up, new and unusual, volume ratios,
decay, and a snapshot that survives a restart."""

from __future__ import annotations

import datetime as dt
from typing import Any

from collector.behaviour.approvals import ApprovalView
from collector.behaviour.enrich import Behaviour
from collector.behaviour.risk import HALF_LIFE_SECONDS, RiskBook
from collector.store.devices import Approval

DAY0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)  # a Monday


def at(day: int, hour: float) -> float:
    return (DAY0 + dt.timedelta(days=day, hours=hour)).timestamp()


def event(action: str, when: float, user: str = "alice", **fields: Any) -> dict[str, Any]:
    out = {
        "@timestamp": dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event.action": action,
        "user.name": user,
        "host.name": "ws-1",
    }
    out.update({k.replace("__", "."): v for k, v in fields.items()})
    return out


def work(
    behaviour: Behaviour,
    days: int,
    *,
    user: str = "alice",
    start: int = 8,
    end: int = 17,
    writes: int = 0,
    size: int = 0,
) -> None:
    """`days` working days in time order; on the first `writes` of them, one removable write at 10:30."""
    for day in range(days):
        for hour in (start, (start + end) // 2, end):
            behaviour.enrich(event("file.open", at(day, hour), user), at(day, hour))
        if day < writes:
            write(behaviour, day, 10.5, size, user=user)


def write(
    behaviour: Behaviour, day: int, hour: float, size: int, *, user: str = "alice", serial: str = "S-1"
) -> dict[str, Any]:
    when = at(day, hour)
    mapping = event("file.write", when, user, device__serial=serial, file__size=size)
    return dict(behaviour.enrich(mapping, when))


def test_two_days_of_history_is_not_new_and_twelve_are() -> None:
    young, old = Behaviour(), Behaviour()
    work(young, 2)
    work(old, 12)
    assert write(young, 2, 10, 1000)["exfilguard.baseline.first_removable_use"] is False
    seen = write(old, 12, 10, 1000)
    assert seen["exfilguard.baseline.first_removable_use"] is True
    assert seen["exfilguard.baseline.history_days"] == 13
    assert seen["exfilguard.baseline.unusual_hour"] is False  # 10:00 is within 08-17
    # The next day it is no longer the first use, and the device is no longer new.
    again = write(old, 13, 10, 1000)
    assert again["exfilguard.baseline.first_removable_use"] is False
    assert again["exfilguard.baseline.removable_days"] == 1
    assert again["exfilguard.baseline.first_device_use"] is False


def test_unusual_hour_is_outside_the_users_own_span() -> None:
    day_worker, late_worker = Behaviour(), Behaviour()
    work(day_worker, 12)
    work(late_worker, 12, start=13, end=22)
    assert write(day_worker, 12, 22.5, 1000)["exfilguard.baseline.unusual_hour"] is True
    assert write(late_worker, 12, 21.5, 1000)["exfilguard.baseline.unusual_hour"] is False


def test_volume_ratio_against_own_history_and_peers() -> None:
    behaviour = Behaviour(groups={"alice": "finance", "bob": "finance"})
    work(behaviour, 12, user="bob", writes=12, size=5_000_000)
    work(behaviour, 12, writes=12, size=5_000_000)
    usual = write(behaviour, 12, 10, 5_000_000)
    assert usual["exfilguard.baseline.volume_ratio"] == 1.0
    for _ in range(8):
        spike = write(behaviour, 12, 10.5, 5_000_000)
    assert spike["exfilguard.baseline.volume_ratio"] == 9.0
    assert spike["exfilguard.baseline.files_ratio"] == 9.0
    assert spike["exfilguard.baseline.peer_ratio"] == 9.0
    assert spike["exfilguard.baseline.peer_group"] == "finance"
    assert "volume_spike" in spike["exfilguard.risk.signals"]


def test_approvals_for_everyone_a_user_or_a_group() -> None:
    view = ApprovalView([Approval("A", "all"), Approval("U", "user", "alice"), Approval("G", "group", "it")])
    behaviour = Behaviour(groups={"bob": "it"}, approvals=view)
    seen = {
        (user, serial): write(behaviour, 0, 10, 1, user=user, serial=serial)
        for user in ("alice", "bob", "carol")
        for serial in ("A", "U", "G", "X")
    }
    assert all(seen[(u, "A")]["device.approved"] for u in ("alice", "bob", "carol"))
    assert [u for u in ("alice", "bob", "carol") if seen[(u, "U")]["device.approved_for_user"]] == ["alice"]
    assert [u for u in ("alice", "bob", "carol") if seen[(u, "G")]["device.approved_for_user"]] == ["bob"]
    assert not any(seen[(u, "X")]["device.approved_for_user"] for u in ("alice", "bob", "carol"))
    assert seen[("alice", "U")]["device.approved"] is False


def test_risk_counts_a_signal_once_a_day_and_halves_every_half_life() -> None:
    book = RiskBook()
    book.add("alice", "unusual_hour", 20.0, 1000.0, day=1)
    book.add("alice", "unusual_hour", 20.0, 1100.0, day=1)
    assert book.score("alice", 1100.0) == 20.0
    assert book.score("alice", 1000.0 + HALF_LIFE_SECONDS) == 10.0
    book.add("alice", "unusual_hour", 20.0, 1000.0 + HALF_LIFE_SECONDS, day=8)
    assert book.score("alice", 1000.0 + HALF_LIFE_SECONDS) == 30.0
    assert book.signals("alice") == ["unusual_hour", "unusual_hour"]


def test_snapshot_restores_baselines_and_risk_after_a_restart() -> None:
    before = Behaviour()
    work(before, 12, writes=5, size=1_000_000)
    write(before, 12, 23, 1_000_000)
    after = Behaviour()
    assert after.restore(before.snapshot()) == 1
    assert after.snapshot() == before.snapshot()
    seen = write(after, 12, 23.5, 1_000_000)
    assert seen["exfilguard.baseline.removable_days"] == 5
    assert seen["exfilguard.risk.score"] == before.risk.score("alice", at(12, 23.5))
    assert after.restore({"bob": {"baseline": {"hours": [1]}}}) == 0  # malformed: skipped


def test_a_device_new_to_a_warm_host_whoever_plugs_it_in() -> None:
    behaviour = Behaviour()
    work(behaviour, 12)
    nobody = {"@timestamp": "", "event.action": "device.attach", "host.name": "ws-1", "device.serial": "S-9"}
    assert behaviour.enrich(nobody, at(12, 9))["exfilguard.baseline.first_device_on_host"] is True
    assert write(behaviour, 12, 10, 1)["exfilguard.baseline.first_device_on_host"] is True  # S-1, today
    assert write(behaviour, 13, 10, 1)["exfilguard.baseline.first_device_on_host"] is False
    young = Behaviour()
    work(young, 2)
    assert write(young, 2, 10, 1)["exfilguard.baseline.first_device_on_host"] is False
    restored = Behaviour()
    restored.restore(behaviour.snapshot())
    day = behaviour.local(at(12, 9))[0]  # local day numbers count from 1970
    assert restored.hosts.hosts["ws-1"].devices == {"S-9": day, "S-1": day}


def test_an_attach_naming_no_user_is_judged_for_the_hosts_latest_user() -> None:
    behaviour = Behaviour(approvals=ApprovalView([Approval("S-A", "user", "alice")]))
    attach = {"@timestamp": "", "event.action": "device.attach", "host.name": "ws-1", "device.serial": "S-A"}
    assert behaviour.enrich(attach, at(0, 9))["device.approved_for_user"] is False  # nobody seen yet
    behaviour.enrich(event("file.open", at(0, 9.5), "alice"), at(0, 9.5))
    assert behaviour.enrich(attach, at(0, 10))["device.approved_for_user"] is True
    behaviour.enrich(event("file.open", at(0, 11), "bob"), at(0, 11))
    assert behaviour.enrich(attach, at(0, 12))["device.approved_for_user"] is False
