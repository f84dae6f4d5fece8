"""Regular expressions in policies run on RE2: time linear in the text, whatever the pattern.

Python's `re` backtracks: `(a+)+$` against a 28-character file name took 25 s and doubled with each
character, stalling ingest for every agent. RE2 cannot take backreferences or lookaround, so such
a pattern is refused when the policy is loaded (EG114), never when an event arrives.

RE2 differs from `re` in small ways a policy author may meet: `\\d`, `\\w`, `\\s` and `\\b` are
ASCII only, and `$` matches only at the very end of the text (not before a final newline).

Errors:
    RegexError     the pattern is not a regular expression at all (EG109)
      NotLinear    a valid `re` pattern that needs backtracking (EG114)
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import re2

from collector.policy.errors import PolicyError

# RE2 compiles a pattern into an automaton; this bounds the memory one pattern may take
# (`(a{1000}){1000}` is refused rather than eating the collector's memory).
MAX_PATTERN_MEMORY = 8 << 20


class Pattern(Protocol):
    """What the evaluator needs of a compiled pattern."""

    def search(self, text: str) -> Any:
        """A match object (truthy) if the pattern occurs in `text`, else None."""


class RegexError(PolicyError):
    """A pattern that cannot be compiled; `message` says why."""

    def __init__(self, pattern: str, message: str) -> None:
        self.pattern = pattern
        self.message = message
        super().__init__(message)


class NotLinear(RegexError):
    """A pattern Python's `re` accepts but that needs backtracking (backreference, lookaround)."""


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would write each refusal to stderr; we report it ourselves
_OPTIONS.max_mem = MAX_PATTERN_MEMORY


def compile_pattern(pattern: str) -> Pattern:
    """Compile `pattern` for linear-time search; raises RegexError / NotLinear saying why not."""
    try:
        compiled: Pattern = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        first = exc.args[0] if exc.args else ""
        reason = first.decode(errors="replace") if isinstance(first, bytes) else str(first)
    else:
        return compiled
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise RegexError(pattern, f"invalid regular expression: {exc}") from exc
    raise NotLinear(
        pattern,
        f"regular expression needs backtracking ({reason}); backreferences and lookaround are not "
        "supported, because a backtracking pattern can stall ingest",
    )
