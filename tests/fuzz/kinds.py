"""The fuzz kinds `python -m bench.fuzz` runs, in one explicit list.

A kind is a module with `run(seconds: float, directory: Path) -> dict[str, Any]` (or, written
`module:function`, another function of that shape): fuzz for about
`seconds` (files under `directory`), then return the figures, at least `inputs`, `crashes` and
`hangs` (ints); anything else it reports is passed on. To add a kind, write its module under
tests/fuzz/ (with a brief CI run in a tests/fuzz/test_*.py beside it) and add one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

Runner = Callable[[float, Path], dict[str, Any]]

KINDS: dict[str, str] = {
    "grpc": "tests.fuzz.grpc_target",  # AgentMessages over real streams to a real collector process
    "policy": "tests.fuzz.policy_files",  # policy files through lint, loadable sets through the engine
    "agent-config": "tests.fuzz.configs:run_agent",  # agent.yaml through its loader
    "collector-config": "tests.fuzz.configs:run_collector",  # collector.yaml through its loader
    "export": "tests.fuzz.exports",  # export/verify round trips, mutated exports and manifests
}


def runner(name: str) -> Runner:
    """The `run` function of a registered kind."""
    module_name, _, function = KINDS[name].partition(":")
    run: Runner = getattr(importlib.import_module(module_name), function or "run")
    return run
