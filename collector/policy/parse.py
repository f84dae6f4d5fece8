"""Parse stage: policy YAML files -> model objects with locations, collecting every structural problem.

Only the shape of each item is checked here (keys, types, units, regexes). Cross-references
(fields, lists, macros, duplicates) are the `validate` stage's job; evaluation is `conditions`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

from collector.policy import regex, units
from collector.policy.errors import Problem
from collector.policy.model import (
    SEVERITIES,
    Aggregate,
    AllOf,
    AnyOf,
    Condition,
    Coverage,
    FieldTest,
    Macro,
    MacroRef,
    Measure,
    NamedList,
    Not,
    Policy,
    PolicyException,
    PolicySet,
    Sequence,
    Severity,
    Step,
    Suppress,
    TimeOfDay,
    Weekday,
    Where,
)
from common import yamlfile
from common.errors import ExfilGuardError
from common.yamlfile import Location

# Limits on input: a policy file is admin-written, but a mistake must not exhaust the collector.
MAX_FILE_BYTES = 4 << 20
MAX_FILES = 1000
MAX_LIST_VALUES = 100_000
MAX_CONDITION_DEPTH = 32

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # lists and macros: lower_snake_case
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")  # policy ids: stable, human, kebab-case
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DAYS = {
    name: i
    for i, names in enumerate(
        (
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
            ("sun", "sunday"),
        )
    )
    for name in names
}

STRING_OPS = ("glob", "regex", "contains", "startswith", "endswith")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
OPS = ("eq", "ne", "any_of", "in", "not_in", "exists", *NUMBER_OPS, *STRING_OPS)
COMBINATORS = ("all", "any", "not", "macro", "time_of_day", "weekday")

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


class _Skip(ExfilGuardError):
    """This node had a problem (already recorded); drop the node, keep parsing its siblings."""


class _Partial(_Skip):
    """A policy with problems, kept (with what did parse) so the validate stage still checks it."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy


class _FileParser:
    def __init__(self, doc: yamlfile.Document, problems: list[Problem]) -> None:
        self.doc = doc
        self.problems = problems
        self.kind = ""
        self.item = ""
        self.item_loc: Location = ()

    # -- problems and locations

    def where(self, loc: Location) -> Where:
        mark = self.doc.mark(loc)
        return Where(self.doc.path, mark.line, mark.column, yamlfile.dotted(loc[len(self.item_loc) :]))

    def fail(self, code: str, loc: Location, message: str) -> _Skip:
        where = self.where(loc)
        self.problems.append(
            Problem(code, where.path, where.line, where.column, message, self.kind, self.item, where.key)
        )
        return _Skip()

    def expect(self, value: Any, kind: type | tuple[type, ...], loc: Location, what: str) -> None:
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail("EG105", loc, f"expected {what}, got {_describe(value)}")

    def text(self, value: Any, loc: Location, what: str = "a string") -> str:
        self.expect(value, str, loc, what)
        return cast(str, value)

    def keys(
        self, mapping: dict[str, Any], loc: Location, allowed: Iterable[str], required: Iterable[str]
    ) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if key not in allowed:
                self.fail("EG103", (*loc, key), f"unknown key; expected one of {', '.join(allowed)}")
        missing = [key for key in required if key not in mapping]
        if missing:
            raise self.fail("EG104", loc, f"required key is missing: {', '.join(missing)}")

    def field_list(self, value: Any, loc: Location) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        self.expect(value, list, loc, "a field name or a list of field names")
        out = []
        for i, item in enumerate(value):
            out.append(self.text(item, (*loc, i), "a field name"))
        return tuple(out)

    # -- the file

    def parse(self, into: PolicySet) -> None:
        data = self.doc.data
        if data is None:
            return  # an empty file is allowed (a placeholder in a policy directory)
        if not isinstance(data, dict):
            self.fail("EG105", (), f"expected a mapping with {', '.join(_TOP_KEYS)}, got {_describe(data)}")
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
        except _Skip:
            return
        parse(value)

    def lists(self, section: dict[str, Any], into: PolicySet) -> None:
        for name, values in section.items():
            self.kind, self.item, self.item_loc = "list", name, ("lists", name)
            loc: Location = ("lists", name)
            try:
                self.name(name, loc)
                self.expect(values, list, loc, "a list of values")
                if len(values) > MAX_LIST_VALUES:
                    raise self.fail("EG106", loc, f"a list holds at most {MAX_LIST_VALUES} values")
                for i, value in enumerate(values):
                    self.expect(value, (str, int, float, bool), (*loc, i), "a string or a number")
                self.add(into.lists, name, NamedList(name, tuple(values), self.where(loc)), loc)
            except _Skip:
                continue

    def macros(self, section: dict[str, Any], into: PolicySet) -> None:
        for name, body in section.items():
            self.kind, self.item, self.item_loc = "macro", name, ("macros", name)
            loc: Location = ("macros", name)
            try:
                self.name(name, loc)
                self.add(into.macros, name, Macro(name, self.condition(body, loc), self.where(loc)), loc)
            except _Skip:
                continue

    def name(self, name: str, loc: Location) -> None:
        if not _NAME.match(name):
            raise self.fail("EG106", loc, f"names of lists and macros are lower_snake_case, got {name!r}")

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
            except _Skip:
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
            except _Skip:
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
            return units.duration(value)
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
            op, value = self.threshold(spec, mloc, units.number)
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

    # -- conditions

    def condition(self, body: Any, loc: Location, depth: int = 0) -> Condition:
        if depth > MAX_CONDITION_DEPTH:
            raise self.fail("EG106", loc, f"conditions nest at most {MAX_CONDITION_DEPTH} deep")
        if isinstance(body, str):
            return MacroRef(body, self.where(loc))  # a bare name is a macro, as in Falco
        self.expect(body, dict, loc, "a condition (a mapping of fields, or all/any/not/macro)")
        if not body:
            raise self.fail("EG106", loc, "an empty condition")
        parts = self.each([(self.part, key, value, (*loc, key), depth) for key, value in body.items()])
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts), self.where(loc))

    def each(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run every parse call so siblings are checked too; the ones that parsed are kept (the
        problem was recorded, and the policy is marked broken by `policy`)."""
        out = []
        for fn, *args in calls:
            try:
                out.append(fn(*args))
            except _Skip:
                continue
        if not out:
            raise _Skip()
        return out

    def part(self, key: str, value: Any, loc: Location, depth: int) -> Condition:
        where = self.where(loc)
        if key in ("all", "any"):
            self.expect(value, list, loc, f"a list of conditions under {key}")
            if not value:
                raise self.fail("EG106", loc, f"{key} needs at least one condition")
            children = tuple(
                self.each([(self.condition, c, (*loc, i), depth + 1) for i, c in enumerate(value)])
            )
            return AllOf(children, where) if key == "all" else AnyOf(children, where)
        if key == "not":
            return Not(self.condition(value, loc, depth + 1), where)
        if key == "macro":
            return MacroRef(self.text(value, loc, "a macro name"), where)
        if key == "time_of_day":
            return self.time_of_day(value, loc)
        if key == "weekday":
            days = value if isinstance(value, list) else [value]
            out = set()
            for i, day in enumerate(days):
                if not isinstance(day, str) or day.lower() not in _DAYS:
                    raise self.fail(
                        "EG110",
                        (*loc, i) if isinstance(value, list) else loc,
                        f"expected a weekday such as mon or saturday, got {day!r}",
                    )
                out.add(_DAYS[day.lower()])
            return Weekday(frozenset(out), where)
        return self.field_test(key, value, loc)

    def time_of_day(self, value: Any, loc: Location) -> TimeOfDay:
        self.expect(value, dict, loc, "a mapping such as {outside: ['07:00', '19:00']}")
        if len(value) != 1 or next(iter(value)) not in ("between", "outside"):
            raise self.fail("EG111", loc, "time_of_day takes between or outside")
        mode, span = next(iter(value.items()))
        sloc = (*loc, mode)
        if not isinstance(span, list) or len(span) != 2:
            raise self.fail("EG110", sloc, "expected two times, e.g. ['19:00', '07:00']")
        minutes = []
        for i, text in enumerate(span):
            m = _HHMM.match(str(text)) if isinstance(text, str) else None
            if not m:
                raise self.fail("EG110", (*sloc, i), f"expected a time of day HH:MM (quoted), got {text!r}")
            minutes.append(int(m.group(1)) * 60 + int(m.group(2)))
        return TimeOfDay(minutes[0], minutes[1], mode == "between", self.where(loc))

    def field_test(self, field: str, value: Any, loc: Location) -> Condition:
        where = self.where(loc)
        if isinstance(value, list):
            return FieldTest(field, "any_of", self.scalars(value, loc), where)
        if not isinstance(value, dict):
            self.expect(
                value, (str, int, float, bool), loc, "a value, a list of values or a mapping of operators"
            )
            return FieldTest(field, "eq", value, where)
        if not value:
            raise self.fail("EG106", loc, "an empty field test")
        tests: list[Condition] = []
        for op, operand in value.items():
            oloc = (*loc, op)
            tests.append(FieldTest(field, op, self.operand(op, operand, oloc), self.where(oloc)))
        return tests[0] if len(tests) == 1 else AllOf(tuple(tests), where)

    def scalars(self, values: list[Any], loc: Location) -> tuple[object, ...]:
        if not values:
            raise self.fail("EG106", loc, "an empty list matches nothing")
        for i, v in enumerate(values):
            self.expect(v, (str, int, float, bool), (*loc, i), "a string or a number")
        return tuple(values)

    def operand(self, op: str, operand: Any, loc: Location) -> object:
        if op not in OPS:
            raise self.fail("EG111", loc, f"unknown operator; expected one of {', '.join(OPS)}")
        if op in ("eq", "ne"):
            self.expect(operand, (str, int, float, bool), loc, "a single value")
            return operand
        if op == "any_of":
            self.expect(operand, list, loc, "a list of values")
            return self.scalars(operand, loc)
        if op in ("in", "not_in"):
            return self.text(operand, loc, "the name of a list")
        if op == "exists":
            self.expect(operand, bool, loc, "true or false")
            return operand
        if op in NUMBER_OPS:
            try:
                return units.number(operand)
            except ValueError as exc:
                raise self.fail("EG108", loc, str(exc)) from exc
        patterns = operand if isinstance(operand, list) else [operand]
        for i, pattern in enumerate(patterns):
            ploc = (*loc, i) if isinstance(operand, list) else loc
            self.text(pattern, ploc, "a string or a list of strings")
            if op == "regex":
                try:
                    regex.compile_pattern(pattern)
                except regex.NotLinear as exc:
                    raise self.fail("EG114", ploc, exc.message) from exc
                except regex.RegexError as exc:
                    raise self.fail("EG109", ploc, exc.message) from exc
        return tuple(patterns)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


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
