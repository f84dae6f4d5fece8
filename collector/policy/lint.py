"""Lint checks: small classes with a code and a severity, registered in CHECKS, individually suppressible.

`check(policy_set)` runs every registered check; `policy lint --ignore EG303` drops one.
Errors of the parse and validate stages come first; these are the advisory findings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar

from collector.policy.errors import Problem
from collector.policy.model import FieldTest, Macro, MacroRef, NamedList, PolicySet, policy_conditions, walk
from collector.policy.parse import POLICY_KEYS


class Check:
    """One lint check; subclasses set `code` and implement `run`."""

    code: ClassVar[str]

    def run(self, policy_set: PolicySet) -> Iterator[Problem]:
        """Yield the problems found in the set."""
        raise NotImplementedError


def _references(policy_set: PolicySet) -> tuple[set[str], set[str]]:
    lists: set[str] = set()
    macros: set[str] = set()
    roots = [m.condition for m in policy_set.macros.values()]
    for policy in policy_set.all_policies():
        roots.extend(policy_conditions(policy))
    for root in roots:
        for node in walk(root):
            if isinstance(node, FieldTest) and node.op in ("in", "not_in"):
                lists.add(str(node.value))
            elif isinstance(node, MacroRef):
                macros.add(node.name)
    return lists, macros


class UnusedList(Check):
    """A list nothing refers to is probably a typo in a policy or a leftover."""

    code = "EG301"

    def run(self, policy_set: PolicySet) -> Iterator[Problem]:
        used, _ = _references(policy_set)
        yield from _unused(self.code, "list", policy_set.lists, used)


class UnusedMacro(Check):
    """A macro nothing refers to."""

    code = "EG302"

    def run(self, policy_set: PolicySet) -> Iterator[Problem]:
        _, used = _references(policy_set)
        yield from _unused(self.code, "macro", policy_set.macros, used)


def _unused(
    code: str, kind: str, items: Mapping[str, NamedList | Macro], used: set[str]
) -> Iterator[Problem]:
    """A problem for each list or macro (`kind`) that nothing refers to."""
    for name, item in items.items():
        if name not in used:
            w = item.where
            yield Problem(code, w.path, w.line, w.column, f"{kind} is never used", kind, name)


class KeyOrder(Check):
    """Keys in the canonical order make every policy read the same way (as Falco's rules do)."""

    code = "EG303"

    def run(self, policy_set: PolicySet) -> Iterator[Problem]:
        for policy in policy_set.all_policies():
            known = [k for k in policy.keys if k in POLICY_KEYS]
            if known != sorted(known, key=POLICY_KEYS.index):
                w = policy.where
                order = ", ".join(k for k in POLICY_KEYS if k in known)
                yield Problem(
                    self.code,
                    w.path,
                    w.line,
                    w.column,
                    f"write the keys in this order: {order}",
                    "policy",
                    policy.id,
                )


class MissingTags(Check):
    """Tags (MITRE ATT&CK ids) tell the officer and the SIEM what kind of act this is."""

    code = "EG304"

    def run(self, policy_set: PolicySet) -> Iterator[Problem]:
        for policy in policy_set.all_policies():
            if not policy.tags:
                w = policy.where
                yield Problem(
                    self.code,
                    w.path,
                    w.line,
                    w.column,
                    "add tags, e.g. [attack.t1052.001]",
                    "policy",
                    policy.id,
                )


CHECKS: tuple[type[Check], ...] = (UnusedList, UnusedMacro, KeyOrder, MissingTags)


def check(policy_set: PolicySet, ignore: frozenset[str] = frozenset()) -> list[Problem]:
    """Run every registered check whose code is not in `ignore`."""
    out: list[Problem] = []
    for check_class in CHECKS:
        if check_class.code not in ignore:
            out.extend(check_class().run(policy_set))
    return out
