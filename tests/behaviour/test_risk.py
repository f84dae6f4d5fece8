"""The risk score's elevations: `user-risk-elevated` fires once per elevation (not again for the
repeats folded in its suppression window, nor after a restart), and again only after the score
fell below 60 and rose again."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.behaviour.enrich import Behaviour
from collector.behaviour.risk import ELEVATED, HALF_LIFE_SECONDS, RiskBook
from collector.policy.engine import PolicyEngine
from tests.policy.helpers import event, policy_set, stored
from tests.policy.test_pack import pack, replay

__all__ = ["pack"]

DAY = 86_400.0


def test_the_pack_raises_user_risk_elevated_once_for_one_elevation(pack: Path) -> None:
    alerts = replay(pack, "user-risk-elevated.positive.jsonl")  # follow-ups of folded repeats included
    elevated = [a for a in alerts if a["policy.id"] == "user-risk-elevated"]
    assert len(elevated) == 1, [a["summary"] for a in elevated]
    assert "exfilguard.alert.repeat_of" not in elevated[0]
    # The other policies of the same burst still fold their repeats into a follow-up.
    assert any(a.get("exfilguard.alert.repeat_of") for a in alerts)


def test_an_elevation_is_reported_once_kept_across_a_restart_and_re_armed_below_the_threshold() -> None:
    book = RiskBook()
    book.add("oscar", "first_removable_use", 30.0, 0.0, 0)
    book.report("oscar", 0.0)  # not elevated: nothing to mark
    assert not book.reported("oscar", 0.0)
    book.add("oscar", "unusual_hour", 40.0, 10.0, 0)
    assert book.score("oscar", 10.0) >= ELEVATED and not book.reported("oscar", 10.0)
    book.report("oscar", 10.0)
    assert book.reported("oscar", DAY)  # 70 halves every 7 days: still above 60 a day later
    restarted = RiskBook()
    restarted.restore(book.snapshot())
    assert restarted.reported("oscar", DAY)
    later = HALF_LIFE_SECONDS  # 35: below the threshold, the elevation is over
    assert not restarted.reported("oscar", later)
    restarted.add("oscar", "volume_spike", 30.0, later, 7)  # 65: a new elevation, not reported yet
    assert restarted.score("oscar", later) >= ELEVATED and not restarted.reported("oscar", later)


def test_standing_is_score_signals_and_reported_in_one_call() -> None:
    book = RiskBook()
    assert book.standing("nobody", 0.0) == (0.0, [], False)
    book.add("oscar", "first_removable_use", 30.0, 0.0, 0)
    book.add("oscar", "unusual_hour", 40.0, 10.0, 0)
    book.report("oscar", 10.0)
    for now in (10.0, DAY, HALF_LIFE_SECONDS, 40 * HALF_LIFE_SECONDS):
        twin = RiskBook()
        twin.restore(book.snapshot())
        expected = (twin.score("oscar", now), twin.signals("oscar"), twin.reported("oscar", now))
        if not expected[0]:
            expected = (expected[0], [], False)
        assert book.standing("oscar", now) == expected


RISKLESS = """
policies:
  - id: noisy
    title: Noisy
    severity: medium
    when: {event.action: file.open}
    summary: "{user.name} opened {file.path}"
    tags: [t]
  - id: copied
    title: Copied
    severity: high
    when: {event.action: file.copy}
    summary: "{user.name} copied {file.path} (risk {exfilguard.risk.score})"
    tags: [t]
"""


@pytest.mark.parametrize("as_stored", [False, True], ids=["mapping", "view"])
def test_an_alert_of_a_policy_that_reads_no_risk_still_carries_the_users_score(as_stored: bool) -> None:
    # No policy here reads the risk fields, so the enrichment leaves a nonzero score out of the
    # event until an alert is built from it (collector/behaviour/enrich.py, `complete`).
    engine = PolicyEngine(policy_set(RISKLESS), timezone="UTC", suppression_seconds=0, behaviour=Behaviour())
    feed = stored if as_stored else (lambda mapping: mapping)
    assert [a.policy_id for a in engine.evaluate(feed(event("file.open")))] == ["noisy"]
    (alert,) = engine.evaluate(feed(event("file.copy", file__path="/media/x")))
    assert alert.alert["exfilguard.risk.score"] == 10.0  # the medium alert's points, not yet its own
    assert alert.alert["exfilguard.risk.signals"] == ["alert:noisy"]
    assert "(risk 10.0)" in alert.alert["summary"]
    # The score the next alert carries counts the first one's points again only once a day.
    (again,) = engine.evaluate(feed(event("file.copy", file__path="/media/y")))
    assert again.alert["exfilguard.risk.score"] == 10.0


def test_an_event_no_risk_policy_meets_still_re_arms_a_reported_elevation() -> None:
    engine = PolicyEngine(policy_set(RISKLESS), timezone="UTC", suppression_seconds=0, behaviour=Behaviour())
    book = engine.behaviour.risk if engine.behaviour is not None else RiskBook()
    now = 1_794_996_000.0  # 2026-11-18T10:00:00Z, the helpers' event time
    book.add("alice", "first_removable_use", 70.0, now - HALF_LIFE_SECONDS, 0)
    book.report("alice", now - HALF_LIFE_SECONDS)  # reported at 70; 35 by the event's time
    engine.evaluate(stored(event("file.modify")))  # no policy meets it: the risk fields are left out
    assert not book.users["alice"].reported
