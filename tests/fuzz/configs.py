"""Fuzz kinds 'agent-config' and 'collector-config': generated and mutated agent.yaml / collector.yaml.

Documents are drawn from the keys of each role's pydantic model (nested models, sink types and all)
with wrong, odd and hostile values, and the shipped examples are mutated. Loading must give a config
or a YamlError naming this file and a line (the daemons print it and exit 2); anything else is a
crash.
"""

from __future__ import annotations

import random
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import yaml
from hypothesis import strategies as st

from collector import config as collector_config
from common import agentconfig
from common.yamlfile import YamlError
from tests.fuzz.files import Tally, drive, hang_limit, mutate, mutations, random_mutations

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

WORDS = (
    "127.0.0.1:50051", "0.0.0.0:1", "[::1]:50051", "host", ":0", "127.0.0.1:99999", "/var/lib/x",
    "relative/dir", "", "/", "monitor", "block", "open", "closed", "on", "off", "jsonl", "webhook",
    "syslog", "email", "stdout", "carrier-pigeon", "udp", "tcp", "tls", "http://127.0.0.1:9000/h",
    "ftp://x", "Europe/Berlin", "Mars/Olympus", "postgresql://u@h/db", "INFO", "LOUD", "10m", "500MiB",
    "-1", "1e999", "/srv/db", "/home/*/projects", "[", "*", "\x00", "a" * 5000,
)  # fmt: skip


def _keys(model: type[pydantic.BaseModel], prefix: str = "") -> list[tuple[str, ...]]:
    """Every key path of a model, nested models and the members of unions of models included."""
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        out.append((key,))
        for sub in _models(info.annotation):
            out.extend((key, *rest) for rest in _keys(sub))
    return out


def _models(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    found: list[type[pydantic.BaseModel]] = []
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        for arg in args:
            found.extend(_models(arg))
    return found


scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=16),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), inner),
    ),
    max_leaves=6,
)


def _nest(paths: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for path, value in paths:
        node = doc
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    # `alerts` is a list of sinks: wrap whatever was drawn for it.
    if isinstance(doc.get("alerts"), dict):
        doc["alerts"] = [doc["alerts"]]
    return doc


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")


class Role:
    """One config file kind: its loader, its model's key paths, its shipped example."""

    def __init__(self, name: str, load: Callable[[Path], object], model: type[pydantic.BaseModel]) -> None:
        self.name = name
        self.load = load
        self.keys = _keys(model)
        self.example = EXAMPLES / f"{name}.yaml"
        structured = st.lists(st.tuples(st.sampled_from(self.keys), values), max_size=8).map(_nest).map(_dump)
        mutated = st.tuples(st.just(self.example.read_bytes()), mutations()).map(lambda t: mutate(*t))
        both = st.tuples(structured, mutations()).map(lambda t: mutate(*t))
        self.inputs = st.one_of(structured, mutated, both)

    def random_input(self, seed: int) -> bytes:
        """The long run's cheap generator: random key paths and words, or a mutated example."""
        rng = random.Random(seed)
        if rng.random() < 0.5:
            base = self.example.read_bytes()
        else:
            picks = [(rng.choice(self.keys), _word(rng)) for _ in range(rng.randint(0, 8))]
            base = _dump(_nest(picks))
            if rng.random() < 0.5:
                return base
        return mutate(base, random_mutations(rng))

    def check(self, data: bytes, tally: Tally, directory: Path) -> None:
        """Load one config file; tally crashes and errors that do not name file and line."""
        path = directory / f"{self.name}.yaml"
        path.write_bytes(data)
        try:
            with hang_limit():
                self.load(path)
        except YamlError as exc:
            tally.refused += 1
            readable = exc.line >= 1 or exc.message.startswith("cannot read")
            if exc.path != str(path) or not readable or not exc.message:
                tally.found("unlocated", f"{exc} on input {data!r:.300}")
        except Exception as exc:  # every escape is what the fuzzer looks for
            tally.crash(exc, data)
        else:
            tally.accepted += 1

    def run(self, seconds: float, directory: Path) -> dict[str, Any]:
        """bench.fuzz kind '<name>-config'."""
        directory.mkdir(parents=True, exist_ok=True)
        def one(seed: int, tally: Tally) -> None:
            self.check(self.random_input(seed), tally, directory)

        return drive(st.integers(0, 2**64), one, seconds).figures()


def _word(rng: random.Random) -> Any:
    return rng.choice((*WORDS, rng.randint(-(10**9), 10**9), True, None, [], {}, [rng.choice(WORDS)]))


AGENT = Role("agent", agentconfig.load, agentconfig.AgentConfig)
COLLECTOR = Role("collector", collector_config.load, collector_config.CollectorConfig)


def run_agent(seconds: float, directory: Path) -> dict[str, Any]:
    """bench.fuzz kind 'agent-config'."""
    return AGENT.run(seconds, directory)


def run_collector(seconds: float, directory: Path) -> dict[str, Any]:
    """bench.fuzz kind 'collector-config'."""
    return COLLECTOR.run(seconds, directory)
