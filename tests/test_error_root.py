"""Every exception class the project defines derives from common.errors.ExfilGuardError."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from common.errors import ExfilGuardError, LocatedError, PathError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("admin", "agent", "collector", "common", "lab", "protos")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_exception_derives_from_the_root() -> None:
    outside = []
    seen = 0
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                seen += 1
                if not issubclass(cls, ExfilGuardError):
                    outside.append(f"{name}.{cls_name}")
    assert seen > 20, "the walk found too few exception classes to be looking at the right tree"
    assert not outside, f"not under ExfilGuardError: {outside}"


@pytest.mark.parametrize("location", ["/etc/exfilguard/agent.yaml", Path("/var/lib/x.db")])
def test_a_located_error_carries_its_fields(location: str | Path) -> None:
    err = PathError(location, "cannot read")
    assert isinstance(err, LocatedError)
    assert (err.location, err.path, err.reason) == (str(location), str(location), "cannot read")
    assert str(err) == f"{location}: cannot read"
