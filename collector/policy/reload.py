"""PolicyReloader: notices changed policy files (mtime polling) and swaps the engine's set.

A set with any error is refused, every problem is logged with its location, and the previous
set keeps running. Window state of policies whose shape did not change survives the swap.

A change is loaded only once the files look the same on two checks in a row: an editor or a
deployment tool that writes a file in several steps would otherwise be caught half-way, and a
half-written file can be valid YAML holding fewer policies (an empty file holds none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from collector.policy import loader, parse
from collector.policy.engine import PolicyEngine
from collector.policy.errors import PolicySetError, Problem

log = logging.getLogger("exfilguard.collector.policy")

Snapshot = tuple[tuple[str, int, int], ...]


class PolicyReloader:
    """Watches the configured policy paths; `check()` reloads when a file changed, `reload()` always."""

    def __init__(self, paths: Sequence[str | Path], engine: PolicyEngine, poll_seconds: float = 0.0) -> None:
        self.paths = list(paths)
        self.engine = engine
        self.poll_seconds = poll_seconds  # how often to `check()` (0: never; SIGHUP still reloads)
        self.snapshot = self.scan()
        self._settling: Snapshot | None = None  # a change seen once, loaded if it holds
        self.reloads = 0
        self.failures = 0
        self.last_problems: list[Problem] = []

    def scan(self) -> Snapshot:
        """(path, mtime, size) of every policy file now."""
        files, _ = parse.policy_files(self.paths)
        out = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(out)

    def check(self) -> bool | None:
        """Reload if any file was added, removed or changed: True loaded, False refused, None unchanged."""
        snapshot = self.scan()
        if snapshot == self.snapshot:
            self._settling = None
            return None
        if snapshot != self._settling:
            self._settling = snapshot  # still being written? look again at the next check
            return None
        self.snapshot, self._settling = snapshot, None
        return self.reload()

    def reload(self) -> bool:
        """Load the set now; on any error keep the running one. True if the new set runs."""
        try:
            policy_set = loader.load(self.paths)
        except PolicySetError as exc:
            self.failures += 1
            self.last_problems = exc.problems
            for problem in exc.problems:
                if problem.severity == "error":
                    log.error(
                        "policy reload refused: %s",
                        problem,
                        extra={"code": problem.code, "path": problem.path, "line": problem.line},
                    )
            log.error("policy set unchanged: still running %s", self.engine.set_hash[:12])
            return False
        old = self.engine.set_hash
        if not policy_set.policies and self.engine.policy_set.policies:
            log.warning("policy reload leaves no policies: nothing will be detected until some are added")
        self.engine.load(policy_set)
        self.reloads += 1
        self.last_problems = []
        log.info(
            "policy set reloaded: %d policies, %s -> %s",
            len(policy_set.policies),
            old[:12],
            self.engine.set_hash[:12],
            extra={"set_hash": self.engine.set_hash},
        )
        return True
