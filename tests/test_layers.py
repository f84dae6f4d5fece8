"""The import rules of docs/architecture.md ("Who may import whom"), read from every module's source.

Every import counts: at module level, inside a function (lazy) or under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("admin", "agent", "collector", "common", "lab", "protos", "bench", "tests")

# package -> the packages of ours it may import (besides itself)
MAY_IMPORT: dict[str, set[str]] = {
    "common": set(),
    "protos": {"common"},
    "lab": {"common"},
    "agent": {"common", "protos"},
    "collector": {"common", "protos"},
    "admin": {"agent", "collector", "common", "lab", "protos"},
}
# sub-package -> sub-packages of the same package it must not import
MUST_NOT_IMPORT: dict[str, set[str]] = {
    "collector.store": {
        "collector.evidence", "collector.policy", "collector.alerts", "collector.behaviour",
        "collector.forward", "collector.formats",
    },
    # documents know fields, not where they are sent
    "collector.formats": {"collector.alerts", "collector.forward", "collector.policy", "collector.store"},
    "collector.tls": {
        "collector.evidence", "collector.policy", "collector.alerts", "collector.behaviour",
        "collector.fleet", "collector.store",
    },
    "collector.fleet": {"collector.evidence", "collector.policy", "collector.alerts", "collector.behaviour"},
}


def _modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imported(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every absolute or relative import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from collector import evidence` imports a package too
                yield node.lineno, f"{base}.{alias.name}"


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_arrows_point_one_way(package: str) -> None:
    allowed = MAY_IMPORT[package] | {package}
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for module, path in _modules(package)
        for line, name in imported(module, path)
        if name.split(".")[0] in OURS and name.split(".")[0] not in allowed
    ]
    assert not wrong, f"{package} may import only {sorted(allowed)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("sub", sorted(MUST_NOT_IMPORT))
def test_rooms_inside_a_package(sub: str) -> None:
    package = sub.partition(".")[0]
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for module, path in _modules(package)
        if _under(module, sub)
        for line, name in imported(module, path)
        if any(_under(name, banned) for banned in MUST_NOT_IMPORT[sub])
    ]
    assert not wrong, f"{sub} must not import {sorted(MUST_NOT_IMPORT[sub])}:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_arrow(tmp_path: Path) -> None:
    # The rules above can fail: a module that imports upwards is reported, with its line.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from collector.evidence import chain\n")
    assert (4, "collector.evidence.chain") in list(imported("collector.store.bad", bad))
