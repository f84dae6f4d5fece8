"""The policy language, from inline YAML: conditions, lists, macros, time, aggregates, sequences."""

from __future__ import annotations

import math
from typing import Any

import pytest

from collector.policy import conditions
from collector.policy.engine import PolicyEngine
from collector.policy.errors import PolicySetError
from tests.policy.helpers import engine, event, fired, policy_set, stored

ONE = """
lists:
  allowed: [OK-1, OK-2]
macros:
  removable_write: {event.action: file.write}
policies:
  - id: p
    title: P
    severity: high
    when: %s
    summary: "{user.name} wrote {file.path}"
    tags: [t]
"""


@pytest.fixture(params=[False, True], ids=["mapping", "view"])
def as_stored(request: pytest.FixtureRequest) -> bool:
    """Events fed as mappings (the closures) or as stored events' views (the fused functions)."""
    return bool(request.param)


def fed(mapping: dict[str, Any], as_stored: bool) -> Any:
    """The event as a mapping, or as a stored event's view."""
    return stored(mapping) if as_stored else mapping


def single(condition: str, timezone: str = "UTC") -> PolicyEngine:
    return engine(ONE % condition, timezone)


@pytest.mark.parametrize(
    ("condition", "fields", "expected"),
    [
        ("{file.path: /a}", {"file__path": "/a"}, True),
        ("{file.path: /a}", {"file__path": "/b"}, False),
        ("{file.path: [/a, /b]}", {"file__path": "/b"}, True),
        ("{file.path: {ne: /a}}", {"file__path": "/b"}, True),
        ("{file.size: {gte: 1MiB}}", {"file__size": 1 << 20}, True),
        ("{file.size: {gt: 1MiB}}", {"file__size": 1 << 20}, False),
        ("{file.size: {lt: 10}}", {}, False),  # unknown size is not small
        ("{file.path: {glob: '/media/*/STICK/*.jpg'}}", {"file__path": "/media/al/STICK/x.jpg"}, True),
        ("{file.path: {regex: '\\.(zip|7z)$'}}", {"file__path": "/tmp/x.7z"}, True),
        ("{file.path: {contains: secret}}", {"file__path": "/home/secret/x"}, True),
        ("{file.path: {startswith: [/srv, /home]}}", {"file__path": "/home/x"}, True),
        ("{file.path: {endswith: .db}}", {"file__path": "/srv/x.sqlite"}, False),
        ("{tags: database}", {"tags": ["crown", "database"]}, True),  # a list field matches any element
        ("{tags: {contains: database}}", {"tags": ["database"]}, True),
        ("{tags: {exists: true}}", {}, False),
        ("{device.removable: false}", {}, True),  # unset proto3 bool is false
        ("{device.serial: {in: allowed}}", {"device__serial": "OK-2"}, True),
        ("{device.serial: {not_in: allowed}}", {"device__serial": "OK-2"}, False),
        ("{device.serial: {not_in: allowed}}", {}, True),  # no serial at all is not allowed
        ("removable_write", {}, False),
        ("{not: {file.path: /a}}", {"file__path": "/a"}, False),
        ("{any: [{file.path: /a}, {user.name: alice}]}", {"file__path": "/z"}, True),
        ("{all: [{file.path: /a}, {user.name: bob}]}", {"file__path": "/a"}, False),
        ("{macro: removable_write, file.path: /a}", {"file__path": "/a"}, False),
        ("{file.size: {gte: 0}}", {"file__size": 0}, True),  # a size of zero is known
        ("{file.size: {gte: 0}}", {}, False),
        ("{process.pid: 42}", {"process__pid": 42}, True),
        ("{process.pid: {gt: 41}}", {"process__pid": 42}, True),
        ("{device.removable: true}", {"device__removable": True}, True),
        ("{tags: {exists: false}}", {}, True),
        ("{exfilguard.copy.confidence: {gte: 0.5}}", {"exfilguard__copy__confidence": 0.5}, True),
        ("{user.name: {ne: alice}}", {}, False),
        ("{not: {device.serial: {in: allowed}}}", {"device__serial": "OK-1"}, False),
    ],
)
@pytest.mark.parametrize("as_stored", [False, True], ids=["mapping", "view"])
def test_conditions(condition: str, fields: dict[str, Any], expected: bool, as_stored: bool) -> None:
    # A stored event's view meets each policy's generated function (collector/policy/fused.py),
    # a mapping its closures: both must decide alike.
    runner = single(condition)
    mapping = event("file.open", **fields)
    got = [a.policy_id for a in runner.evaluate(fed(mapping, as_stored))]
    assert (got == ["p"]) is expected


def test_macro_matches_its_action() -> None:
    runner = single("removable_write")
    assert fired(runner, event("file.write")) == ["p"]
    assert fired(runner, event("file.read")) == []


def test_time_of_day_and_weekday_use_the_configured_timezone() -> None:
    cond = "{any: [{time_of_day: {outside: ['07:00', '19:00']}}, {weekday: [sat, sun]}]}"
    berlin = single(cond, "Europe/Berlin")
    # 18:30 UTC on a Wednesday is 19:30 in Berlin (after hours) but inside hours in UTC.
    late = event("file.write", "2026-11-18T18:30:00Z")
    assert fired(berlin, late) == ["p"]
    assert fired(single(cond, "UTC"), late) == []
    assert fired(berlin, event("file.write", "2026-11-18T10:00:00Z")) == []
    assert fired(berlin, event("file.write", "2026-11-21T10:00:00Z")) == ["p"]  # Saturday


def test_time_of_day_between_wraps_midnight() -> None:
    runner = single("{time_of_day: {between: ['22:00', '06:00']}}")
    assert fired(runner, event("x", "2026-11-18T23:59:00Z")) == ["p"]
    assert fired(runner, event("x", "2026-11-18T05:59:00Z")) == ["p"]
    assert fired(runner, event("x", "2026-11-18T06:00:00Z")) == []


EXCEPTIONS = """
lists:
  backup_users: [svc-backup]
policies:
  - id: p
    title: P
    severity: high
    when: {event.action: file.copy}
    exceptions:
      - name: approved_pairs
        fields: [user.name, device.serial]
        values:
          - [svc-backup, BKP-1]
          - [carol, [C-1, C-2]]
      - name: backup_account
        when: {user.name: {in: backup_users}, device.serial: BKP-2}
    summary: x
    tags: [t]
"""


@pytest.mark.parametrize(
    ("user", "serial", "excepted"),
    [
        ("svc-backup", "BKP-1", True),
        ("svc-backup", "OTHER", False),
        ("carol", "C-2", True),
        ("svc-backup", "BKP-2", True),
        ("alice", "BKP-1", False),
    ],
)
@pytest.mark.parametrize("as_stored", [False, True], ids=["mapping", "view"])
def test_structured_exceptions(user: str, serial: str, excepted: bool, as_stored: bool) -> None:
    runner = engine(EXCEPTIONS)
    mapping = event("file.copy", user__name=user, device__serial=serial)
    got = [a.policy_id for a in runner.evaluate(fed(mapping, as_stored))]
    assert (got == []) is excepted


AGG = """
policies:
  - id: bulk
    title: Bulk
    severity: high
    when: {event.action: file.copy}
    aggregate:
      by: [agent.id, device.serial]
      window: 10m
      %s
    summary: "{count} files {bytes} within {window}"
    tags: [t]
"""


def at(minute: int, second: int = 0) -> str:
    return f"2026-11-18T10:{minute:02}:{second:02}.000000Z"


def test_count_fires_at_threshold_inside_window_only(as_stored: bool) -> None:
    runner = engine(AGG % "count: {gte: 3}")
    # Two early copies slide out of the 10 minute window before the third arrives.
    early = [event("file.copy", at(0)), event("file.copy", at(1)), event("file.copy", at(12))]
    assert fired(runner, *early, as_stored=as_stored) == []
    assert fired(runner, event("file.copy", at(13)), as_stored=as_stored) == []
    alerts = runner.evaluate(fed(event("file.copy", at(14)), as_stored))
    assert [a.policy_id for a in alerts] == ["bulk"]
    assert alerts[0].alert["count"] == 3
    assert len(alerts[0].alert["evidence"]) == 3
    # The group restarts after firing.
    assert fired(runner, event("file.copy", at(15)), as_stored=as_stored) == []


def test_groups_are_separate_by_fields(as_stored: bool) -> None:
    runner = engine(AGG % "count: {gte: 2}")
    a = event("file.copy", at(0), device__serial="A")
    b = event("file.copy", at(1), device__serial="B")
    assert fired(runner, a, b, as_stored=as_stored) == []
    assert fired(runner, event("file.copy", at(2), device__serial="B"), as_stored=as_stored) == ["bulk"]


def test_sum_with_size_units(as_stored: bool) -> None:
    runner = engine(AGG % "sum: {field: file.size, gte: 500MiB}")
    assert fired(runner, event("file.copy", at(0), file__size=300 << 20), as_stored=as_stored) == []
    alerts = runner.evaluate(fed(event("file.copy", at(1), file__size=250 << 20), as_stored))
    assert alerts[0].alert["summary"] == "2 files 550.0 MiB within 10m"


def test_distinct_counts_values_not_events(as_stored: bool) -> None:
    runner = engine(AGG % "distinct: {field: file.path, gte: 3}")
    same = [event("file.copy", at(i), file__path="/same") for i in range(5)]
    assert fired(runner, *same, as_stored=as_stored) == []
    others = [event("file.copy", at(6), file__path="/b"), event("file.copy", at(7), file__path="/c")]
    assert fired(runner, *others, as_stored=as_stored) == ["bulk"]


COVERAGE = """
policies:
  - id: whole
    title: Whole collection
    severity: critical
    when: {event.action: file.copy}
    aggregate:
      by: [agent.id]
      window: 1h
      coverage: {of: %s, gte: 80%%, tags: [database]}
    summary: "{coverage} of {tag} ({count} of {inventory_files})"
    tags: [t]
"""


def inventory(files: int, size: int, when: str = at(0)) -> dict[str, object]:
    return event(
        "agent.inventory", when, exfilguard__inventory=[{"tag": "database", "files": files, "bytes": size}]
    )


def copy(i: int, size: int = 100, tags: tuple[str, ...] = ("database",), path: str = "") -> dict[str, object]:
    return event(
        "file.copy",
        at(1 + i),
        exfilguard__source__path=path or f"/srv/db/{i}",
        exfilguard__source__tags=list(tags),
        file__size=size,
    )


def test_coverage_of_files_uses_latest_inventory() -> None:
    runner = engine(COVERAGE % "files")
    runner.evaluate(inventory(100, 10_000))
    runner.evaluate(inventory(5, 500))  # the latest count wins
    assert fired(runner, *[copy(i) for i in range(3)]) == []
    assert fired(runner, copy(2)) == []  # the same file again does not count twice
    alerts = runner.evaluate(copy(3))
    assert alerts[0].alert["summary"] == "80% of database (4 of 5)"


def test_coverage_of_bytes_and_other_tags_ignored() -> None:
    runner = engine(COVERAGE % "bytes")
    runner.evaluate(inventory(10, 1000))
    assert fired(runner, copy(0, 500), copy(1, 200, tags=("source-code",))) == []
    assert fired(runner, copy(2, 300)) == ["whole"]


def test_coverage_counts_the_members_of_an_archive() -> None:
    runner = engine(COVERAGE % "files")
    runner.evaluate(inventory(5, 500))
    tar = copy(0, path="/srv/db/0")
    tar["exfilguard.copy.sources"] = [f"/srv/db/{i}" for i in range(3)]
    tar["exfilguard.copy.members"] = [
        {"name": f"db/{i}", "source": f"/srv/db/{i}", "size": 100} for i in range(3)
    ]
    assert fired(runner, tar) == []  # 3 of 5
    other = copy(1, path="/srv/db/3")
    other["exfilguard.copy.sources"] = ["/srv/db/3", "/srv/db/2"]  # 2 again: counted once
    alerts = runner.evaluate(other)
    assert alerts[0].alert["summary"] == "80% of database (4 of 5)"


def test_coverage_of_an_unlisted_copy_of_several_files_counts_the_bytes_read() -> None:
    # an encrypted stream of the collection (lineage: sources, no members): its bytes are what
    # the pipeline read of them, not 0 B
    with_bytes = COVERAGE.replace("({count} of {inventory_files})", "({count} of {inventory_files}, {bytes})")
    runner = engine(with_bytes % "files")
    runner.evaluate(inventory(5, 500))
    stream = copy(0, size=700, path="/srv/db/0")
    stream["exfilguard.copy.sources"] = [f"/srv/db/{i}" for i in range(5)]
    stream["exfilguard.copy.bytes_read"] = 480
    alerts = runner.evaluate(stream)
    assert alerts[0].alert["summary"] == "100% of database (5 of 5, 480 B)"


def test_coverage_needs_an_inventory() -> None:
    runner = engine(COVERAGE % "files")
    assert fired(runner, *[copy(i) for i in range(10)]) == []


SEQ = """
policies:
  - id: staged
    title: Staged theft
    severity: critical
    sequence:
      by: [agent.id, user.name]
      within: 30m
      steps:
        - name: read
          when: {event.action: file.mass_read}
        - name: archive
          when: {event.action: file.archive}
        - name: usb
          when: {event.action: file.write}
    summary: "{steps} in {window} onto {device.serial}"
    tags: [t]
"""


def test_sequence_in_order_within_span(as_stored: bool) -> None:
    runner = engine(SEQ)
    got = fired(
        runner,
        event("file.mass_read", at(0)),
        event("file.archive", at(5), device__serial="X"),
        event("file.write", at(20)), as_stored=as_stored)
    assert got == ["staged"]


def test_sequence_out_of_order_or_too_slow_or_other_user(as_stored: bool) -> None:
    out_of_order = [event("file.archive", at(0)), event("file.mass_read", at(1)), event("file.write", at(2))]
    assert fired(engine(SEQ), *out_of_order, as_stored=as_stored) == []
    too_slow = [event("file.mass_read", at(0)), event("file.archive", at(10)), event("file.write", at(40))]
    assert fired(engine(SEQ), *too_slow, as_stored=as_stored) == []
    other_user = [
        event("file.mass_read", at(0)),
        event("file.archive", at(1)),
        event("file.write", at(2), user__name="bob"),
    ]
    assert fired(engine(SEQ), *other_user, as_stored=as_stored) == []


def test_sequence_alert_borrows_fields_of_earlier_steps(as_stored: bool) -> None:
    runner = engine(SEQ.replace("file.archive}", "device.attach}"))
    alerts = [
        a
        for e in (
            event("file.mass_read", at(0)),
            event("device.attach", at(1), device__serial="STICK-9"),
            event("file.write", at(2)),
        )
        for a in runner.evaluate(fed(e, as_stored))
    ]
    assert alerts[0].alert["summary"] == "read -> archive -> usb in 30m onto STICK-9"
    assert alerts[0].alert["device.serial"] == "STICK-9"


SUPPRESS = """
policies:
  - id: copy
    title: Copy
    severity: high
    when: {event.action: file.copy}
    suppress: {by: [user.name], window: 10m}
    summary: "{user.name} copied {file.path}"
    tags: [t]
"""


def test_suppression_folds_repeats_into_one_follow_up_with_a_count() -> None:
    runner = engine(SUPPRESS, suppression=600)
    first = runner.evaluate(event("file.copy", at(0), file__path="/a"))
    assert len(first) == 1
    assert fired(runner, *[event("file.copy", at(1 + i), file__path=f"/{i}") for i in range(4)]) == []
    assert fired(runner, event("file.copy", at(2), user__name="bob")) == ["copy"]  # another group
    assert runner.flush(runner.clock) == []  # the window is still open
    follow = runner.flush(math.inf)
    mine = [a for a in follow if a.alert["user.name"] == "alice"]
    assert mine[0].alert["count"] == 4
    assert mine[0].alert["exfilguard.alert.repeats"] == 4
    assert mine[0].alert["exfilguard.alert.repeat_of"] == first[0].id
    assert len(mine[0].alert["evidence"]) == 4


def test_alert_shape_and_policy_set_hash() -> None:
    runner = engine(SUPPRESS)
    alert = runner.evaluate(
        event(
            "file.copy",
            at(0),
            file__path="/m/x",
            device__serial="S",
            file__size=10,
            exfilguard__source__path="/s",
        )
    )[0]
    body = alert.to_json()
    for key in (
        "id",
        "@timestamp",
        "policy.id",
        "policy.title",
        "severity",
        "summary",
        "host.name",
        "user.name",
        "agent.id",
        "count",
        "evidence",
        "device.serial",
        "file.path",
        "file.size",
        "exfilguard.source.path",
    ):
        assert key in body, key
    assert body["policy.set_hash"] == runner.set_hash
    assert len(runner.set_hash) == 64


def test_set_hash_changes_with_content_not_location() -> None:
    a = policy_set(SUPPRESS, "/etc/exfilguard/policies/x.yaml")
    b = policy_set(SUPPRESS, "/tmp/elsewhere/x.yaml")
    c = policy_set(SUPPRESS.replace("10m", "11m"), "/tmp/elsewhere/x.yaml")
    assert a.hash == b.hash != c.hash


def test_index_by_action_skips_unrelated_policies() -> None:
    runner = engine(SUPPRESS)
    assert fired(runner, event("file.read")) == []
    assert runner.stats()["policies"] == 1


@pytest.mark.parametrize(
    ("condition", "left"),
    [
        ("{event.action: file.write, file.path: /a}", "file.path"),  # the action test is left out
        ("{all: [removable_write, {file.path: /a}]}", "file.path"),  # from the macro too
        ("{event.action: [file.write, file.copy]}", None),  # nothing left to test
        ("{any: [removable_write, {file.path: /a}]}", "any"),  # an alternative stays as written
    ],
)
def test_the_index_leaves_out_action_tests_it_already_made(condition: str, left: str | None) -> None:
    macros = {"removable_write": policy_set(ONE % "removable_write").macros["removable_write"].condition}
    when = policy_set(ONE % condition).policies[0].when
    reduced = conditions.without_known_actions(when, frozenset({"file.write"}), macros)
    shown = None if reduced is None else getattr(reduced, "field", type(reduced).__name__.lower()[:3])
    assert shown == left
    runner = single(condition)
    assert fired(runner, event("file.write", file__path="/a")) == ["p"]
    assert fired(runner, event("file.open", file__path="/a")) == ([] if left != "any" else ["p"])


def test_window_groups_are_capped_and_expire() -> None:
    from collector.policy.windows import Limits

    runner = PolicyEngine(
        policy_set(AGG % "count: {gte: 5}"), limits=Limits(max_groups=100), suppression_seconds=0
    )
    for i in range(250):
        runner.evaluate(event("file.copy", at(0), device__serial=f"S{i}"))
    stats = runner.stats()
    assert stats["open_groups"] == 100
    assert stats["evicted_groups"] == 150
    runner.evaluate(event("file.read", at(30)))  # moves the clock past the window
    assert runner.expire() == 100
    assert runner.stats()["open_groups"] == 0


def test_reload_keeps_windows_of_unchanged_policies() -> None:
    runner = engine(AGG % "count: {gte: 3}")
    fired(runner, event("file.copy", at(0)), event("file.copy", at(1)))
    runner.load(policy_set((AGG % "count: {gte: 3}").replace("title: Bulk", "title: Bulk copy")))
    assert fired(runner, event("file.copy", at(2))) == ["bulk"]
    runner.load(policy_set((AGG % "count: {gte: 3}").replace("10m", "20m")))  # new shape: fresh windows
    assert fired(runner, event("file.copy", at(3)), event("file.copy", at(4))) == []


def test_warm_rebuilds_windows_without_alerts() -> None:
    runner = engine(AGG % "count: {gte: 3}")
    assert runner.warm([event("file.copy", at(0)), event("file.copy", at(1)), event("file.copy", at(1))]) == 3
    assert runner.stats()["alerts"] == 0
    runner = engine(AGG % "count: {gte: 3}")
    runner.warm([event("file.copy", at(0)), event("file.copy", at(1))])
    assert fired(runner, event("file.copy", at(2))) == ["bulk"]


def test_strict_set_with_errors_raises_with_every_problem() -> None:
    with pytest.raises(PolicySetError) as caught:
        policy_set(ONE % "{file.pth: /a, user.nme: x}")
    codes = sorted(p.code for p in caught.value.problems if p.severity == "error")
    assert codes == ["EG201", "EG201"]


def test_coverage_of_several_tags_reached_by_one_copy_is_one_alert() -> None:
    runner = engine((COVERAGE % "files").replace("tags: [database]", "tags: [database, crown]"))
    runner.evaluate(
        event(
            "agent.inventory",
            at(0),
            exfilguard__inventory=[
                {"tag": "database", "files": 2, "bytes": 200},
                {"tag": "crown", "files": 2, "bytes": 200},
            ],
        )
    )
    assert fired(runner, copy(0, tags=("database", "crown"))) == []
    alerts = runner.evaluate(copy(1, tags=("database", "crown")))
    assert len(alerts) == 1
    assert alerts[0].alert["exfilguard.alert.tag"] == "database, crown"
