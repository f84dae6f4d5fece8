"""Load a policy set: parse -> validate -> lint, in strict mode (collector) or collect-all mode (lint)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from collector.policy import lint, parse, validate
from collector.policy.errors import PolicySetError, Problem
from collector.policy.model import PolicySet


def lint_paths(paths: Iterable[str | Path], ignore: Iterable[str] = ()) -> tuple[PolicySet, list[Problem]]:
    """Collect-all mode: every problem (errors and warnings) in the files under `paths`, sorted by place."""
    skip = frozenset(ignore)
    policy_set, problems = parse.parse_paths(paths)
    problems += validate.validate(policy_set)
    problems += lint.check(policy_set, skip)
    problems = [p for p in problems if p.code not in skip or p.severity == "error"]
    problems.sort(key=lambda p: (p.path, p.line, p.column, p.code))
    return policy_set, problems


def load(paths: Iterable[str | Path]) -> PolicySet:
    """Strict mode: the whole set, or PolicySetError (with every problem) if any error was found."""
    policy_set, problems = lint_paths(paths)
    if any(p.severity == "error" for p in problems):
        raise PolicySetError(problems)
    return policy_set
