"""The config reference documents every key the daemons accept (docs/config.md)."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from collector.config import CollectorConfig
from common.agentconfig import AgentConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def _keys(model: type[pydantic.BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        nested = [
            a for a in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, pydantic.BaseModel)
        ]
        if nested and name != "alerts":  # sinks are a table of their own
            yield from _keys(nested[0], f"{prefix}{name}.")
        else:
            yield prefix + name


@pytest.mark.parametrize("model", [AgentConfig, CollectorConfig])
def test_every_config_key_is_documented(model: type[pydantic.BaseModel]) -> None:
    text = DOC.read_text()
    section = text.split("## collector.yaml")[0 if model is AgentConfig else 1]
    missing = [key for key in _keys(model) if f"`{key}`" not in section]
    assert not missing, f"docs/config.md does not document {missing}"
