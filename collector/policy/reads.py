"""Which policies read the user's risk fields (`exfilguard.risk.*`, collector/behaviour/risk.py).

Two things depend on it: a policy that tests the risk fields must not feed the score it reads
with its own alerts (engine), and the enrichment computes a user's nonzero score and signals
only for the events that meet such a policy (for the others they are added only when an alert
is built from the event: collector/behaviour/enrich.py, `complete`).
"""

from __future__ import annotations

from collector.policy.model import FieldTest, MacroRef, Policy, PolicySet, policy_conditions, walk

RISK_PREFIX = "exfilguard.risk."


def tests_risk(policy: Policy, policy_set: PolicySet) -> bool:
    """True when the policy (or a macro it uses) tests a risk field."""
    seen: set[str] = set()
    roots = list(policy_conditions(policy))
    while roots:
        for node in walk(roots.pop()):
            if isinstance(node, FieldTest) and node.field.startswith(RISK_PREFIX):
                return True
            if isinstance(node, MacroRef) and node.name not in seen and node.name in policy_set.macros:
                seen.add(node.name)
                roots.append(policy_set.macros[node.name].condition)
    return False


def needs_risk(policy: Policy, policy_set: PolicySet) -> bool:
    """True when the policy may read the risk fields of an event before an alert is built from
    it: it tests them, groups or measures by them, or is a sequence (whose last step's alert is
    built from the whole event inside its window, collector/policy/windows.py)."""
    if policy.sequence is not None or tests_risk(policy, policy_set):
        return True
    named: list[str | None] = list(policy.suppress.by)
    if policy.aggregate is not None:
        agg = policy.aggregate
        named += [*agg.by, *(m.field for m in agg.measures)]
        if agg.coverage is not None:
            cov = agg.coverage
            named += [cov.tag_field, cov.path_field, cov.size_field]
    return any(name is not None and name.startswith(RISK_PREFIX) for name in named)
