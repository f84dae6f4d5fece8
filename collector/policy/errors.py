"""Errors and problem codes of the policy package: every code is documented here, in one place.

    PolicyError               root of everything below
      PolicySetError          a policy set was refused (strict mode); carries every Problem

A Problem is one finding (error or warning) with a code, a location chain (file, line,
column, item kind, item id) and a message. `policy lint` prints them; the collector refuses a
set with any error and keeps running the previous one.

Codes (E = error, W = warning):

    EG100 E  file cannot be read (missing, permissions, not UTF-8) or no policy files found
    EG101 E  invalid YAML syntax
    EG102 E  duplicate key in a mapping
    EG103 E  unknown key
    EG104 E  required key is missing
    EG105 E  wrong type (e.g. a list where a mapping belongs)
    EG106 E  invalid value (severity, id format, empty list, ...)
    EG107 E  invalid duration (use 30s, 10m, 2h, 7d)
    EG108 E  invalid number, size (500MiB) or percentage (80%)
    EG109 E  invalid regular expression
    EG110 E  invalid time of day (HH:MM) or weekday
    EG111 E  unknown operator in a field test
    EG112 E  aggregate / sequence misuse (both set, no measure, coverage mixed with others)
    EG113 E  YAML document beyond a bound (size, nesting depth, alias count or expansion)
    EG114 E  regular expression needs backtracking (backreference, lookaround): policies run
             on RE2, in time linear in the text, so one pattern cannot stall ingest
    EG201 E  unknown event field (not in protos/exfilguard.proto)
    EG202 E  reference to an unknown list
    EG203 E  reference to an unknown macro
    EG204 E  macros refer to each other in a cycle
    EG205 E  duplicate id (policy, list or macro defined twice in the set)
    EG206 E  unknown placeholder in a summary template
    EG301 W  list is never used
    EG302 W  macro is never used
    EG303 W  policy keys out of the canonical order (id, title, severity, description, when,
             aggregate/sequence, exceptions, suppress, summary, tags)
    EG304 W  policy has no tags (MITRE ATT&CK ids help the officer and the SIEM)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from common.errors import ExfilGuardError

Severity = Literal["error", "warning"]

CODES: dict[str, tuple[Severity, str]] = {
    "EG100": ("error", "file cannot be read"),
    "EG101": ("error", "invalid YAML"),
    "EG102": ("error", "duplicate key"),
    "EG103": ("error", "unknown key"),
    "EG104": ("error", "required key is missing"),
    "EG105": ("error", "wrong type"),
    "EG106": ("error", "invalid value"),
    "EG107": ("error", "invalid duration"),
    "EG108": ("error", "invalid number, size or percentage"),
    "EG109": ("error", "invalid regular expression"),
    "EG110": ("error", "invalid time of day or weekday"),
    "EG111": ("error", "unknown operator"),
    "EG112": ("error", "aggregate or sequence misuse"),
    "EG113": ("error", "YAML document beyond a bound"),
    "EG114": ("error", "regular expression needs backtracking"),
    "EG201": ("error", "unknown event field"),
    "EG202": ("error", "unknown list"),
    "EG203": ("error", "unknown macro"),
    "EG204": ("error", "macro cycle"),
    "EG205": ("error", "duplicate id"),
    "EG206": ("error", "unknown summary placeholder"),
    "EG301": ("warning", "unused list"),
    "EG302": ("warning", "unused macro"),
    "EG303": ("warning", "keys out of order"),
    "EG304": ("warning", "policy has no tags"),
}


@dataclass(frozen=True)
class Problem:
    """One finding with its code and location chain (file, line, column, item kind, item id)."""

    code: str
    path: str
    line: int
    column: int
    message: str
    item_kind: str = ""  # policy, list, macro ("" for the file itself)
    item_id: str = ""
    key: str = ""  # dotted key inside the item, e.g. aggregate.window

    @property
    def severity(self) -> Severity:
        """error or warning, from the code table."""
        return CODES[self.code][0]

    def as_dict(self) -> dict[str, Any]:
        """JSON form for `policy lint --json`."""
        return {**asdict(self), "severity": self.severity}

    def __str__(self) -> str:
        item = f" {self.item_kind} {self.item_id!r}" if self.item_id else ""
        key = f" {self.key}:" if self.key else ""
        return (
            f"{self.path}:{self.line}:{self.column}: {self.severity} {self.code}{item}:{key} {self.message}"
        )


class PolicyError(ExfilGuardError):
    """Root error of collector.policy."""


class PolicySetError(PolicyError):
    """A policy set was refused; `problems` holds every error (and warning) found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        first = str(errors[0]) if errors else "no errors"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"policy set refused: {first}{more}")
