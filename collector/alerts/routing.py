"""Route: which alerts a sink takes — a minimum severity, policy ids and policy tags (globs).

    route = Route(min_severity="high", policies=("usb-*",), tags=("T1052*",))
    route.accepts(alert)      # the alert's severity, policy.id and policy.tags

Unset parts do not filter; set parts must all match. Ids and tags are fnmatch globs matched
case-sensitively (policy ids are lower-case words, ATT&CK tags upper-case).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from collector.alerts.alert import SEVERITY_ORDER


def _pattern(globs: Iterable[str]) -> re.Pattern[str] | None:
    globs = tuple(globs)
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


class Route:
    """The filter of one sink (collector.yaml: min_severity, policies, tags)."""

    def __init__(
        self, min_severity: str | None = None, policies: Iterable[str] = (), tags: Iterable[str] = ()
    ) -> None:
        if min_severity is not None and min_severity not in SEVERITY_ORDER:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITY_ORDER)}")
        self.min_severity = min_severity
        self.policies = tuple(policies)
        self.tags = tuple(tags)
        self._policies = _pattern(self.policies)
        self._tags = _pattern(self.tags)

    @property
    def everything(self) -> bool:
        """True when the route lets every alert through."""
        return self.min_severity is None and not self.policies and not self.tags

    def accepts(self, alert: Mapping[str, Any]) -> bool:
        """True if the sink should get this alert."""
        if self.min_severity is not None:
            rank = SEVERITY_ORDER.get(str(alert.get("severity", "")), 0)
            if rank < SEVERITY_ORDER[self.min_severity]:
                return False
        if self._policies is not None and not self._policies.fullmatch(str(alert.get("policy.id", ""))):
            return False
        if self._tags is not None:
            values = alert.get("policy.tags") or []
            if not any(self._tags.fullmatch(str(t)) for t in values):
                return False
        return True
