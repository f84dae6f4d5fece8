"""Bad policy files (tests/files/policies/): each error has its code, file, line, column and policy id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.policy import loader
from collector.policy.errors import CODES, PolicySetError

BAD = Path(__file__).resolve().parents[1] / "files" / "policies"


@pytest.mark.parametrize(
    ("name", "code", "line", "column", "item"),
    [
        ("invalid_yaml.yaml", "EG101", 4, 1, ""),
        ("duplicate_key.yaml", "EG102", 7, 5, ""),
        ("unknown_key.yaml", "EG103", 7, 5, "p"),
        ("missing_required.yaml", "EG104", 2, 5, "p"),
        ("wrong_type.yaml", "EG105", 5, 5, "p"),
        ("bad_severity.yaml", "EG106", 4, 5, "p"),
        ("bad_duration.yaml", "EG107", 8, 7, "p"),
        ("bad_size.yaml", "EG108", 9, 31, "p"),
        ("bad_regex.yaml", "EG109", 7, 19, "p"),
        ("bad_time.yaml", "EG110", 6, 40, "p"),
        ("unknown_operator.yaml", "EG111", 6, 19, "p"),
        ("alias_bomb.yaml", "EG113", 9, 10, ""),
        ("backtracking_regex.yaml", "EG114", 7, 19, "p"),
        ("aggregate_no_measure.yaml", "EG112", 6, 5, "p"),
        ("unknown_field.yaml", "EG201", 7, 7, "p"),
        ("unknown_list.yaml", "EG202", 6, 23, "p"),
        ("unknown_macro.yaml", "EG203", 7, 11, "p"),
        ("macro_cycle.yaml", "EG204", 3, 3, "second"),
        ("duplicate_id.yaml", "EG205", 8, 5, "p"),
        ("bad_placeholder.yaml", "EG206", 6, 5, "p"),
    ],
)
def test_bad_file_is_refused_with_code_and_location(
    name: str, code: str, line: int, column: int, item: str
) -> None:
    path = BAD / name
    with pytest.raises(PolicySetError) as caught:
        loader.load([path])
    errors = [p for p in caught.value.problems if p.severity == "error"]
    assert [(p.code, p.path, p.line, p.column, p.item_id) for p in errors] == [
        (code, str(path), line, column, item)
    ]


def test_collect_all_reports_every_problem_of_a_file() -> None:
    _, problems = loader.lint_paths([BAD / "many_problems.yaml"])
    assert [(p.code, p.line, p.item_id) for p in problems] == [
        ("EG106", 4, "first"),
        ("EG201", 6, "first"),
        ("EG108", 7, "first"),
        ("EG107", 14, "second"),
        ("EG206", 15, "second"),
    ]


def test_collect_all_goes_on_across_files() -> None:
    _, problems = loader.lint_paths([BAD])
    files = {Path(p.path).name for p in problems}
    assert files == {f.name for f in BAD.iterdir()}
    # Policies in different files share the id "p": the set-wide check still names each one.
    assert sum(p.code == "EG205" for p in problems) >= 10


def test_unused_list_is_a_warning_that_can_be_ignored() -> None:
    _, problems = loader.lint_paths([BAD / "unused_list.yaml"])
    assert [(p.code, p.severity, p.line, p.column, p.item_kind, p.item_id) for p in problems] == [
        ("EG301", "warning", 2, 3, "list", "never_used")
    ]
    assert loader.lint_paths([BAD / "unused_list.yaml"], ignore=["EG301"])[1] == []
    loader.load([BAD / "unused_list.yaml"])  # strict mode refuses errors only


def test_missing_path_is_an_error() -> None:
    with pytest.raises(PolicySetError) as caught:
        loader.load([BAD / "no-such-dir"])
    assert caught.value.problems[0].code == "EG100"


def test_every_code_is_documented() -> None:
    from collector.policy import errors

    assert errors.__doc__ is not None
    for code in CODES:
        assert code in errors.__doc__


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from admin import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lint_cli_json_and_exit_code() -> None:
    done = _cli("policy", "lint", "--json", str(BAD / "unknown_field.yaml"), str(BAD / "unused_list.yaml"))
    assert done.returncode == 1
    found = json.loads(done.stdout)
    assert {(p["code"], p["line"], p["column"], p["severity"]) for p in found} >= {
        ("EG201", 7, 7, "error"),
        ("EG301", 2, 3, "warning"),
    }
    warn_only = _cli("policy", "lint", str(BAD / "unused_list.yaml"))
    assert warn_only.returncode == 0
    assert "EG301" in warn_only.stdout
    assert _cli("policy", "lint", "--strict", str(BAD / "unused_list.yaml")).returncode == 1
