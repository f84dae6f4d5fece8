"""Fuzz kind 'policy': generated and mutated policy files through lint, and the sets that load through
the engine.

Inputs are policy documents drawn from the language's grammar (real and wrong keys, operators,
fields, units, regexes, nesting) and the shipped pack with a few mutations. Every input must end
in a set or in problems that each carry a code and name the file and (but for unreadable files)
a line; a set without errors is compiled and given events. Anything else is a crash.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from collector.policy import loader
from collector.policy.engine import PolicyEngine
from collector.policy.errors import CODES
from collector.policy.parse_conditions import OPS
from tests.fuzz.files import Tally, drive, hang_limit, mutate, mutations, random_mutations

PACK = Path(__file__).resolve().parents[2] / "policies"
PACK_FILES = tuple(sorted(PACK.glob("*.yaml")))

FIELDS = (
    "event.action", "file.path", "file.size", "user.name", "host.name", "device.serial", "tags",
    "exfilguard.source.tags", "exfilguard.source.path", "process.command_line", "@timestamp",
    "agent.id", "device.removable", "no.such.field", "",
)  # fmt: skip
WORDS = (
    "file.copy", "file.write", "device.attach", "agent.stop", "500MiB", "1.5GB", "80%", "120%", "10m",
    "0s", "-5m", "90d", "100000d", "22:00", "24:00", "mon", "funday", "high", "critical", "loud",
    r"\.(7z|gpg)$", "(a+)+$", r"(\w+)\1", "[", "*.zip", "{user.name}", "{nope}", "{", "allowed",
    "watch_list", "files", "bytes",
)  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=12),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))
field_tests = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(values, st.dictionaries(st.sampled_from((*OPS, "like", "")), values, max_size=3)),
    max_size=3,
)
conditions = st.recursive(
    field_tests,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"all": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"any": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"not": inner}),
        st.fixed_dictionaries({"macro": st.sampled_from(("m", "undefined", ""))}),
        st.fixed_dictionaries({"time_of_day": st.sampled_from(("22:00-06:00", "x", "06:00-22:00"))}),
        st.fixed_dictionaries({"weekday": st.lists(st.sampled_from(WORDS), max_size=3)}),
        st.lists(inner, max_size=2),
    ),
    max_leaves=10,
)
field_lists = st.lists(st.sampled_from(FIELDS), max_size=3)
thresholds = st.dictionaries(st.sampled_from(("gte", "gt", "field", "of", "lt")), values, max_size=3)
aggregates = st.fixed_dictionaries(
    {"by": field_lists, "window": st.sampled_from(WORDS)},
    optional={
        "count": thresholds,
        "distinct": thresholds,
        "sum": thresholds,
        "coverage": st.fixed_dictionaries(
            {"of": st.sampled_from(("files", "bytes", "rows"))},
            optional={"gte": values, "tags": field_lists, "min_files": values},
        ),
    },
)
sequences = st.fixed_dictionaries(
    {
        "by": field_lists,
        "within": st.sampled_from(WORDS),
        "steps": st.lists(st.fixed_dictionaries({"name": scalars, "when": conditions}), max_size=4),
    }
)
exceptions = st.lists(
    st.one_of(
        st.fixed_dictionaries({"name": scalars, "when": conditions}),
        st.fixed_dictionaries({"name": scalars, "fields": field_lists, "values": st.lists(st.lists(values))}),
    ),
    max_size=2,
)
policies = st.fixed_dictionaries(
    {
        "id": st.one_of(st.sampled_from(("p", "p-2", "P!", "")), st.text(max_size=8)),
        "title": scalars,
        "severity": st.sampled_from(("low", "medium", "high", "critical", "loud", "")),
        "summary": st.one_of(st.sampled_from(WORDS), st.text(max_size=20)),
    },
    optional={
        "when": conditions,
        "aggregate": aggregates,
        "sequence": sequences,
        "exceptions": exceptions,
        "suppress": st.fixed_dictionaries({}, optional={"by": field_lists, "window": st.sampled_from(WORDS)}),
        "tags": st.lists(scalars, max_size=2),
        "description": scalars,
        "unknown": scalars,
    },
)
documents = st.fixed_dictionaries(
    {"policies": st.lists(policies, max_size=3)},
    optional={
        "lists": st.dictionaries(st.sampled_from(("allowed", "watch_list", "Bad", "")), values, max_size=2),
        "macros": st.dictionaries(st.sampled_from(("m", "n", "")), conditions, max_size=2),
    },
)


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")


structured = documents.map(_dump)
mutated_pack = st.tuples(st.sampled_from(PACK_FILES), mutations()).map(
    lambda t: mutate(t[0].read_bytes(), t[1])
)
mutated_structured = st.tuples(structured, mutations()).map(lambda t: mutate(*t))
inputs = st.one_of(structured, mutated_pack, mutated_structured)

EVENTS = [
    {"@timestamp": "2026-11-18T23:00:00.000000Z", "event.id": f"e{i}", "event.action": action,
     "agent.id": "a", "host.name": "h", "user.name": "u", "file.path": "/media/s/" + "a" * 40,
     "file.size": 1 << 20, "device.serial": "S", "tags": ["database"],
     "exfilguard.source.tags": ["database"], "exfilguard.source.path": f"/srv/db/{i}"}
    for i, action in enumerate(["file.copy", "file.write", "device.attach", "agent.stop", "file.copy"])
]  # fmt: skip


def check(data: bytes, tally: Tally, directory: Path) -> None:
    """Lint one policy file; run a set that loads through the engine; tally what went wrong."""
    path = directory / "fuzz.yaml"
    path.write_bytes(data)
    try:
        with hang_limit():
            policy_set, problems = loader.lint_paths([path])
            errors = [p for p in problems if p.severity == "error"]
            if not errors and policy_set.policies:
                engine = PolicyEngine(policy_set, suppression_seconds=0.0)
                for event in EVENTS:
                    engine.evaluate(dict(event))
                engine.flush(math.inf)
    except Exception as exc:  # every escape is what the fuzzer looks for
        tally.crash(exc, data)
        return
    for p in problems:
        readable = p.code == "EG100" or p.line >= 1
        if p.code not in CODES or p.path != str(path) or not readable or not p.message:
            tally.found("unlocated", f"{p} on input {data!r:.300}")
    if errors:
        tally.refused += 1
    else:
        tally.accepted += 1


def _pick(rng: random.Random, depth: int = 0) -> Any:
    """A random value, condition or mapping of the grammar's words (the long run's cheap generator)."""
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        return rng.choice((*WORDS, rng.randint(-(10**6), 10**6), rng.random() * 1e6, True, None, ""))
    if roll < 0.6:
        return [_pick(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = (*FIELDS, *OPS, "all", "any", "not", "macro", "by", "window", "count", "gte", "of", "steps",
            "name", "when", "within", "fields", "values", "coverage", "sum", "distinct", "field")  # fmt: skip
    return {rng.choice(keys): _pick(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_document(rng: random.Random) -> bytes:
    """A policy document from the grammar's keys and words, drawn with `rng`."""
    policy_keys = ("id", "title", "severity", "description", "when", "aggregate", "sequence", "exceptions",
                   "suppress", "summary", "tags")  # fmt: skip
    items = []
    for _ in range(rng.randint(0, 3)):
        item = {"id": rng.choice(("p", "q", "P!")), "title": "t", "severity": rng.choice(("high", "x"))}
        item |= {rng.choice(policy_keys): _pick(rng) for _ in range(rng.randint(1, 5))}
        items.append(item)
    doc: dict[str, Any] = {"policies": items}
    if rng.random() < 0.3:
        doc["macros"] = {"m": _pick(rng)}
    if rng.random() < 0.3:
        doc["lists"] = {rng.choice(("allowed", "Bad")): _pick(rng)}
    return _dump(doc)


def _long_run_input(seed: int) -> bytes:
    rng = random.Random(seed)
    roll = rng.random()
    if roll < 0.4:
        return random_document(rng)
    base = random_document(rng) if roll < 0.6 else rng.choice(PACK_FILES).read_bytes()
    return mutate(base, random_mutations(rng))


def run(seconds: float, directory: Path) -> dict[str, Any]:
    """bench.fuzz kind 'policy': the cheap random generator (hypothesis's draws cost more than a lint)."""
    directory.mkdir(parents=True, exist_ok=True)
    return drive(
        st.integers(0, 2**64), lambda seed, tally: check(_long_run_input(seed), tally, directory), seconds
    ).figures()
