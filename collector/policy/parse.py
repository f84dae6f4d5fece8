"""Parse stage: policy YAML files -> model objects with locations, collecting every structural problem.

Only the shape of each item is checked here (keys, types, units, regexes). Cross-references
(fields, lists, macros, duplicates) are the `validate` stage's job; evaluation is `conditions`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

from collector.policy.errors import Problem
from collector.policy.model import (
    SEVERITIES,
    Aggregate,
    Coverage,
    Macro,
    Measure,
    NamedList,
    Policy,
    PolicyException,
    PolicySet,
    Sequence,
    Severity,
    Step,
    Suppress,
)
from collector.policy.parse_conditions import NodeParser, Skip, describe
from common import units, yamlfile
from common.yamlfile import Location

# Limits on input: a policy file is admin-written, but a mistake must not exhaust the collector.
MAX_FILE_BYTES = 4 << 20
MAX_FILES = 1000
MAX_LIST_VALUES = 100_000
# No window may outlive this: window state must expire (memory is bounded by time too).
MAX_DURATION_SECONDS = 90 * 86400.0

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # lists and macros: lower_snake_case
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")  # policy ids: stable, human, kebab-case

POLICY_KEYS = (
    "id",
    "title",
    "severity",
    "description",
    "when",
    "aggregate",
    "sequence",
    "exceptions",
    "suppress",
    "summary",
    "tags",
)
_TOP_KEYS = ("lists", "macros", "policies")
_POLICY_REQUIRED = ("id", "title", "severity", "summary")


class _Partial(Skip):
    """A policy with problems, kept (with what did parse) so the validate stage still checks it."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy


class _FileParser(NodeParser):
    """One policy file: its lists, macros and policies."""

    # -- the file

    def parse(self, into: PolicySet) -> None:
        data = self.doc.data
        if data is None:
            return  # an empty file is allowed (a placeholder in a policy directory)
        if not isinstance(data, dict):
            self.fail("EG105", (), f"expected a mapping with {', '.join(_TOP_KEYS)}, got {describe(data)}")
            return
        for key in data:
            if key not in _TOP_KEYS:
                self.fail("EG103", (key,), f"unknown key; expected one of {', '.join(_TOP_KEYS)}")
        if "lists" in data:
            self.section(data["lists"], "lists", dict, lambda v: self.lists(v, into))
        if "macros" in data:
            self.section(data["macros"], "macros", dict, lambda v: self.macros(v, into))
        if "policies" in data:
            self.section(data["policies"], "policies", list, lambda v: self.policies(v, into))

    def section(self, value: Any, key: str, kind: type, parse: Any) -> None:
        try:
            self.expect(value, kind, (key,), "a mapping" if kind is dict else "a list")
        except Skip:
            return
        parse(value)

    def named(self, section: dict[str, Any], kind: str, key: str) -> Iterator[tuple[str, Any, Location]]:
        """(name, body, location) of each item of a `lists` or `macros` section, with the item being
        parsed set for located problems; a name that is not lower_snake_case is reported, its item
        skipped."""
        for name, body in section.items():
            loc: Location = (key, name)
            self.kind, self.item, self.item_loc = kind, name, loc
            if not _NAME.match(name):
                self.fail("EG106", loc, f"names of lists and macros are lower_snake_case, got {name!r}")
                continue
            yield name, body, loc

    def lists(self, section: dict[str, Any], into: PolicySet) -> None:
        for name, values, loc in self.named(section, "list", "lists"):
            try:
                self.expect(values, list, loc, "a list of values")
                if len(values) > MAX_LIST_VALUES:
                    raise self.fail("EG106", loc, f"a list holds at most {MAX_LIST_VALUES} values")
                for i, value in enumerate(values):
                    self.expect(value, (str, int, float, bool), (*loc, i), "a string or a number")
                self.add(into.lists, name, NamedList(name, tuple(values), self.where(loc)), loc)
            except Skip:
                continue

    def macros(self, section: dict[str, Any], into: PolicySet) -> None:
        for name, body, loc in self.named(section, "macro", "macros"):
            try:
                self.add(into.macros, name, Macro(name, self.condition(body, loc), self.where(loc)), loc)
            except Skip:
                continue

    def add(self, table: dict[str, Any], name: str, item: NamedList | Macro, loc: Location) -> None:
        if name in table:
            other = table[name].where
            raise self.fail(
                "EG205", loc, f"{self.kind} {name!r} is already defined at {other.path}:{other.line}"
            )
        table[name] = item

    def policies(self, section: list[Any], into: PolicySet) -> None:
        for i, body in enumerate(section):
            loc: Location = ("policies", i)
            self.kind, self.item, self.item_loc = "policy", f"#{i + 1}", loc
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                self.item = body["id"]
            try:
                into.policies.append(self.policy(body, loc))
            except _Partial as partial:
                into.broken.append(partial.policy)  # still validated, so lint reports all of it
            except Skip:
                continue

    # -- a policy

    def policy(self, body: Any, loc: Location) -> Policy:
        self.expect(body, dict, loc, "a mapping (a policy)")
        # Each key is parsed on its own so that lint reports every problem of a policy at once.
        failed = False

        def part(parse: Any, *args: Any) -> Any:
            nonlocal failed
            try:
                return parse(*args)
            except Skip:
                failed = True
                return None

        errors_before = len(self.problems)
        part(self.keys, body, loc, POLICY_KEYS, _POLICY_REQUIRED)
        # A missing required key was reported above (EG104); only the keys written are checked.
        policy_id = part(self.policy_id, body["id"], (*loc, "id")) if "id" in body else None
        title = part(self.text, body["title"], (*loc, "title")) if "title" in body else None
        severity = part(self.severity, body["severity"], (*loc, "severity")) if "severity" in body else None
        description = part(self.text, body.get("description", ""), (*loc, "description"))
        summary = part(self.text, body["summary"], (*loc, "summary")) if "summary" in body else None
        tags = part(self.tags, body.get("tags", []), (*loc, "tags"))
        if "aggregate" in body and "sequence" in body:
            part(self.misuse, (*loc, "sequence"), "a policy has an aggregate or a sequence, not both")
        if "when" not in body and "sequence" not in body:
            part(self.misuse, loc, "required key is missing: when", "EG104")
        when = part(self.condition, body["when"], (*loc, "when")) if "when" in body else None
        aggregate = (
            part(self.aggregate, body["aggregate"], (*loc, "aggregate")) if "aggregate" in body else None
        )
        sequence = part(self.sequence, body["sequence"], (*loc, "sequence")) if "sequence" in body else None
        exceptions = part(self.exceptions, body.get("exceptions", []), (*loc, "exceptions"))
        group = aggregate.by if aggregate else sequence.by if sequence else ("agent.id", "user.name")
        suppress = part(self.suppress, body.get("suppress"), (*loc, "suppress"), group)
        failed = failed or len(self.problems) > errors_before
        policy = Policy(
            id=policy_id or self.item,
            title=title or "",
            severity=cast(Severity, severity or "low"),
            description=description or "",
            when=when,
            aggregate=aggregate,
            sequence=sequence,
            exceptions=exceptions or (),
            suppress=suppress or Suppress(group, None),
            summary=summary or "",
            tags=tuple(tags or ()),
            where=self.where(loc),
            keys=tuple(body),
            summary_at=self.where((*loc, "summary")),
        )
        if failed:
            raise _Partial(policy)
        return policy

    def policy_id(self, value: Any, loc: Location) -> str:
        policy_id = self.text(value, loc)
        if not _ID.match(policy_id):
            raise self.fail("EG106", loc, "policy ids are lower-case kebab-case, e.g. usb-copy-database")
        return policy_id

    def severity(self, value: Any, loc: Location) -> str:
        severity = self.text(value, loc)
        if severity not in SEVERITIES:
            raise self.fail("EG106", loc, f"severity is one of {', '.join(SEVERITIES)}")
        return severity

    def tags(self, value: Any, loc: Location) -> list[str]:
        self.expect(value, list, loc, "a list of tags")
        return [self.text(tag, (*loc, j)) for j, tag in enumerate(value)]

    def misuse(self, loc: Location, message: str, code: str = "EG112") -> None:
        raise self.fail(code, loc, message)

    def duration(self, value: Any, loc: Location) -> float:
        try:
            return units.duration(value, maximum=MAX_DURATION_SECONDS)
        except ValueError as exc:
            raise self.fail("EG107", loc, str(exc)) from exc

    def threshold(
        self, body: dict[str, Any], loc: Location, parse: Any
    ) -> tuple[Literal["gte", "gt"], float]:
        ops = [op for op in ("gte", "gt") if op in body]
        if len(ops) != 1:
            raise self.fail("EG104", loc, "give exactly one threshold: gte or gt")
        try:
            op: Literal["gte", "gt"] = "gte" if ops[0] == "gte" else "gt"
            return op, float(parse(body[ops[0]]))
        except ValueError as exc:
            raise self.fail("EG108", (*loc, ops[0]), str(exc)) from exc

    def aggregate(self, body: Any, loc: Location) -> Aggregate:
        self.expect(body, dict, loc, "a mapping (by, window and a measure)")
        self.keys(body, loc, ("by", "window", "count", "distinct", "sum", "coverage"), ("by", "window"))
        by = self.field_list(body["by"], (*loc, "by"))
        window = self.duration(body["window"], (*loc, "window"))
        measures: list[Measure] = []
        for kind in ("count", "distinct", "sum"):
            if kind not in body:
                continue
            mloc = (*loc, kind)
            spec = body[kind]
            self.expect(spec, dict, mloc, "a mapping such as {gte: 20}")
            needs_field = kind != "count"
            self.keys(
                spec,
                mloc,
                ("field", "gte", "gt") if needs_field else ("gte", "gt"),
                ("field",) if needs_field else (),
            )
            field = self.text(spec["field"], (*mloc, "field"), "a field name") if needs_field else None
            op, value = self.threshold(spec, mloc, units.size)
            measures.append(Measure(cast(Any, kind), field, op, value, self.where(mloc)))
        coverage = self.coverage(body["coverage"], (*loc, "coverage")) if "coverage" in body else None
        if coverage and measures:
            raise self.fail(
                "EG112", (*loc, "coverage"), "coverage cannot be combined with count, distinct or sum"
            )
        if not coverage and not measures:
            raise self.fail("EG112", loc, "an aggregate needs a measure: count, distinct, sum or coverage")
        return Aggregate(by, window, tuple(measures), coverage, self.where(loc))

    def coverage(self, body: Any, loc: Location) -> Coverage:
        self.expect(body, dict, loc, "a mapping such as {of: files, gte: 80%}")
        allowed = ("of", "gte", "gt", "tags", "tag_field", "path_field", "size_field", "min_files")
        self.keys(body, loc, allowed, ("of",))
        of = self.text(body["of"], (*loc, "of"))
        if of not in ("files", "bytes"):
            raise self.fail("EG106", (*loc, "of"), "coverage is of files or bytes")
        op, share = self.threshold(body, loc, units.fraction)
        tags = None
        if "tags" in body:
            tags = self.field_list(body["tags"], (*loc, "tags"))
        min_files = body.get("min_files", 1)
        self.expect(min_files, int, (*loc, "min_files"), "a whole number")
        return Coverage(
            of=cast(Literal["files", "bytes"], of),
            op=op,
            threshold=share,
            tags=tags,
            tag_field=self.text(body.get("tag_field", "exfilguard.source.tags"), (*loc, "tag_field")),
            path_field=self.text(body.get("path_field", "exfilguard.source.path"), (*loc, "path_field")),
            size_field=self.text(body.get("size_field", "file.size"), (*loc, "size_field")),
            min_files=max(1, int(min_files)),
            where=self.where(loc),
        )

    def sequence(self, body: Any, loc: Location) -> Sequence:
        self.expect(body, dict, loc, "a mapping (by, within, steps)")
        self.keys(body, loc, ("by", "within", "steps"), ("by", "within", "steps"))
        by = self.field_list(body["by"], (*loc, "by"))
        within = self.duration(body["within"], (*loc, "within"))
        steps_loc = (*loc, "steps")
        self.expect(body["steps"], list, steps_loc, "a list of steps")
        if not 2 <= len(body["steps"]) <= 16:
            raise self.fail("EG112", steps_loc, "a sequence has 2 to 16 steps")
        steps = []
        for i, step in enumerate(body["steps"]):
            sloc = (*steps_loc, i)
            self.expect(step, dict, sloc, "a mapping (name, when)")
            self.keys(step, sloc, ("name", "when"), ("name", "when"))
            steps.append(
                Step(
                    self.text(step["name"], (*sloc, "name")),
                    self.condition(step["when"], (*sloc, "when")),
                    self.where(sloc),
                )
            )
        return Sequence(by, within, tuple(steps), self.where(loc))

    def exceptions(self, body: Any, loc: Location) -> tuple[PolicyException, ...]:
        self.expect(body, list, loc, "a list of exceptions")
        out = []
        for i, item in enumerate(body):
            eloc = (*loc, i)
            self.expect(item, dict, eloc, "a mapping (name, and fields + values or when)")
            self.keys(item, eloc, ("name", "comment", "fields", "values", "when"), ("name",))
            name = self.text(item["name"], (*eloc, "name"))
            if "when" in item:
                if "fields" in item or "values" in item:
                    raise self.fail("EG105", eloc, "an exception has either when, or fields and values")
                out.append(
                    PolicyException(
                        name, (), (), self.condition(item["when"], (*eloc, "when")), self.where(eloc)
                    )
                )
                continue
            if "fields" not in item or "values" not in item:
                raise self.fail("EG104", eloc, "an exception needs when, or fields and values")
            fields = self.field_list(item["fields"], (*eloc, "fields"))
            self.expect(item["values"], list, (*eloc, "values"), "a list of rows")
            rows = []
            for j, written in enumerate(item["values"]):
                rloc = (*eloc, "values", j)
                # One field: a row may be written as a bare value.
                row = written if isinstance(written, list) or len(fields) > 1 else [written]
                self.expect(row, list, rloc, f"a row of {len(fields)} values")
                if len(row) != len(fields):
                    raise self.fail("EG106", rloc, f"a row has one value per field ({len(fields)})")
                rows.append(tuple(tuple(v) if isinstance(v, list) else v for v in row))
            out.append(PolicyException(name, fields, tuple(rows), None, self.where(eloc)))
        return tuple(out)

    def suppress(self, body: Any, loc: Location, default_by: tuple[str, ...]) -> Suppress:
        if body is None:
            return Suppress(default_by, None)
        self.expect(body, dict, loc, "a mapping (by, window)")
        self.keys(body, loc, ("by", "window"), ())
        by = self.field_list(body["by"], (*loc, "by")) if "by" in body else default_by
        window = self.duration(body["window"], (*loc, "window")) if "window" in body else None
        return Suppress(by, window)

def policy_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The *.yaml / *.yml files under `paths` (files or directories), sorted; missing paths are problems."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem("EG100", str(path), 0, 0, "no such file or directory"))
    if len(files) > MAX_FILES:
        problems.append(Problem("EG100", str(files[MAX_FILES]), 0, 0, f"more than {MAX_FILES} policy files"))
        files = files[:MAX_FILES]
    return files, problems


def parse_text(text: str, path: str, into: PolicySet, problems: list[Problem]) -> None:
    """Parse one policy document into `into`, appending every problem found to `problems`."""
    into.files[path] = text.encode()
    try:
        doc = yamlfile.parse(text, path)
    except yamlfile.YamlError as exc:
        if isinstance(exc, yamlfile.YamlLimitError):
            code = "EG113"
        else:
            code = "EG102" if exc.message == "duplicate key" else "EG101"
        problems.append(Problem(code, path, exc.line, exc.column, exc.message, key=exc.key))
        return
    _FileParser(doc, problems).parse(into)


def parse_paths(paths: Iterable[str | Path]) -> tuple[PolicySet, list[Problem]]:
    """Parse every policy file under `paths`; returns the (possibly partial) set and all problems."""
    files, problems = policy_files(paths)
    into = PolicySet()
    for path in files:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(Problem("EG100", str(path), 0, 0, f"larger than {MAX_FILE_BYTES} bytes"))
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem("EG100", str(path), 0, 0, f"cannot read: {exc}"))
            continue
        parse_text(text, str(path), into, problems)
    return into, problems
