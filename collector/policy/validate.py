"""Validate stage: cross-references of a parsed set — fields, lists, macros, cycles, ids, placeholders.

Runs after `parse` on the whole set (lists and macros may live in other files than the
policies using them). Returns problems; never raises.
"""

from __future__ import annotations

from collector.policy import fields, summary
from collector.policy.errors import Problem
from collector.policy.model import (
    Condition,
    FieldTest,
    MacroRef,
    Policy,
    PolicySet,
    TimeOfDay,
    Weekday,
    Where,
    policy_conditions,
    walk,
)


class _Checker:
    def __init__(self, policy_set: PolicySet) -> None:
        self.set = policy_set
        self.problems: list[Problem] = []
        self.kind = ""
        self.item = ""

    def add(self, code: str, where: Where, message: str) -> None:
        self.problems.append(
            Problem(code, where.path, where.line, where.column, message, self.kind, self.item, where.key)
        )

    def field(self, name: str, where: Where) -> None:
        if not fields.is_field(name):
            close = [f for f in fields.FIELDS if f.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
            hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
            self.add("EG201", where, f"unknown event field {name!r}{hint}")

    def condition(self, root: Condition) -> None:
        for node in walk(root):
            if isinstance(node, FieldTest):
                self.field(node.field, node.where)
                if node.op in ("in", "not_in") and node.value not in self.set.lists:
                    self.add("EG202", node.where, f"unknown list {node.value!r}")
            elif isinstance(node, MacroRef) and node.name not in self.set.macros:
                self.add("EG203", node.where, f"unknown macro {node.name!r}")
            elif isinstance(node, (TimeOfDay, Weekday)):
                pass  # checked while parsing

    def policy(self, policy: Policy) -> None:
        self.kind, self.item = "policy", policy.id
        for root in policy_conditions(policy):
            self.condition(root)
        if policy.aggregate:
            agg = policy.aggregate
            for name in agg.by:
                self.field(name, agg.where)
            for measure in agg.measures:
                if measure.field:
                    self.field(measure.field, measure.where)
            if agg.coverage:
                cov = agg.coverage
                for name in (cov.tag_field, cov.path_field, cov.size_field):
                    self.field(name, cov.where)
        if policy.sequence:
            for name in policy.sequence.by:
                self.field(name, policy.sequence.where)
        for exc in policy.exceptions:
            for name in exc.fields:
                self.field(name, exc.where)
        for name in policy.suppress.by:
            self.field(name, policy.where)
        for name in summary.placeholders(policy.summary):
            if name not in summary.MEASURES and not fields.is_field(name):
                self.add(
                    "EG206", policy.summary_at or policy.where, f"unknown placeholder {{{name}}} in summary"
                )

    def macro_cycles(self) -> None:
        graph = {
            name: {n.name for n in walk(m.condition) if isinstance(n, MacroRef)}
            for name, m in self.set.macros.items()
        }
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(name: str, trail: list[str]) -> None:
            state[name] = 1
            for ref in sorted(graph.get(name, ())):
                if state.get(ref) == 1:
                    macro = self.set.macros[name]
                    self.kind, self.item = "macro", name
                    self.add("EG204", macro.where, "macro cycle: " + " -> ".join([*trail, ref]))
                elif ref in graph and ref not in state:
                    visit(ref, [*trail, ref])
            state[name] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name, [name])

    def run(self) -> list[Problem]:
        for name, macro in self.set.macros.items():
            self.kind, self.item = "macro", name
            self.condition(macro.condition)
        self.macro_cycles()
        seen: dict[str, Policy] = {}
        for policy in self.set.all_policies():
            self.policy(policy)
            if policy.id in seen:
                first = seen[policy.id].where
                self.kind, self.item = "policy", policy.id
                self.add("EG205", policy.where, f"policy id is already used at {first.path}:{first.line}")
            seen.setdefault(policy.id, policy)
        return self.problems


def validate(policy_set: PolicySet) -> list[Problem]:
    """Every cross-reference error in the set (fields, lists, macros, cycles, duplicate ids, summaries)."""
    return _Checker(policy_set).run()
