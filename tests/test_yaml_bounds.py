"""Hostile YAML (alias bombs, deep nesting, recursive aliases, odd tags) is a located error, never a crash.

Both configs and the policy files load through common.yamlfile, so each bound is tried through a real
command: the admin CLI's `policy lint` and both daemons' `--config`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common import yamlfile
from common.yamlfile import YamlError, YamlLimitError

BOMB = Path(__file__).resolve().parent / "files" / "policies" / "alias_bomb.yaml"
DEEP = 10_000


def _deep_flow() -> str:
    return "tags: " + "[" * DEEP + "]" * DEEP + "\n"


def _deep_block() -> str:
    return "alerts:\n" + "- " * DEEP + "x\n"


def test_the_547_byte_alias_bomb_is_refused_at_the_alias() -> None:
    assert BOMB.stat().st_size == 547
    with pytest.raises(YamlLimitError) as caught:
        yamlfile.load(BOMB)
    assert (caught.value.path, caught.value.line, caught.value.column) == (str(BOMB), 9, 10)
    assert "100000 nodes" in caught.value.message


@pytest.mark.parametrize("text", [_deep_flow(), _deep_block()], ids=["flow", "block"])
def test_ten_thousand_levels_of_nesting_are_refused_where_the_bound_is_crossed(text: str) -> None:
    with pytest.raises(YamlLimitError) as caught:
        yamlfile.parse(text, "deep.yaml")
    assert caught.value.line >= 1
    assert f"deeper than {yamlfile.MAX_DEPTH} levels" in caught.value.message


def test_nesting_within_the_bound_loads() -> None:
    depth = yamlfile.MAX_DEPTH - 1
    doc = yamlfile.parse("[" * depth + "]" * depth, "ok.yaml")
    assert isinstance(doc.data, list)


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("a: &x [1, *x]\n", 1, 11, "refers to a node that contains it"),
        # An alias may not carry a shallow anchor deeper than the bound either.
        ("a: &d " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*d" + "]" * 30 + "\n", 2, 34, "nests deeper"),
        ("k: &a [1]\nx: [" + "*a, " * 1001 + "]\n", 2, None, "aliases"),
    ],
)
def test_aliases_are_bounded(text: str, line: int, column: int | None, words: str) -> None:
    with pytest.raises(YamlLimitError) as caught:
        yamlfile.parse(text, "a.yaml")
    assert caught.value.line == line
    if column is not None:
        assert caught.value.column == column
    assert words in caught.value.message


def test_a_few_aliases_still_work() -> None:
    doc = yamlfile.parse("base: &b {x: 1}\ncopy: *b\n", "ok.yaml")
    assert doc.data == {"base": {"x": 1}, "copy": {"x": 1}}


def test_an_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(YamlLimitError) as caught:
        yamlfile.parse("#" * (yamlfile.MAX_DOCUMENT_CHARS + 1), "big.yaml")
    assert caught.value.path == "big.yaml"


def test_an_oversized_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:  # sparse: 1 GiB of NULs takes no disk
        handle.truncate(1 << 30)
    with pytest.raises(YamlLimitError) as caught:
        yamlfile.load(big)
    assert (caught.value.path, caught.value.line) == (str(big), 1)


@pytest.mark.parametrize(
    ("text", "line", "column", "key"),
    [
        ("a: !!python/object:os.system x\n", 1, 4, "a"),
        ("a:\n  b: !!int twelve\n", 2, 6, "a.b"),
        ("a: !!float 1x\n", 1, 4, "a"),
        ("a: [!!binary a, 2]\n", 1, 5, "a[0]"),
        ("a: !!timestamp 2020-13-45\n", 1, 4, "a"),
        ("a: !!int\n", 1, 4, "a"),
        ("a: !!timestamp x\n", 1, 4, "a"),
        ("a: !!int " + "9" * 5000 + "\n", 1, 4, "a"),
        ("a: 1\nb: \x01\n", 2, 4, ""),
    ],
)
def test_values_pyyaml_cannot_build_are_located_errors(text: str, line: int, column: int, key: str) -> None:
    with pytest.raises(YamlError) as caught:
        yamlfile.parse(text, "t.yaml")
    assert (caught.value.line, caught.value.column, caught.value.key) == (line, column, key)
    assert not isinstance(caught.value, YamlLimitError)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", *command], capture_output=True, text=True, timeout=60, check=False
    )


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(f"import sys; from {module} import main; sys.exit(main())", *args)


def test_policy_lint_reports_bombs_and_depth_with_a_code(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("policies:\n  - id: p\n    when: " + "[" * DEEP + "]" * DEEP + "\n")
    done = _cli("admin", "policy", "lint", str(BOMB), str(deep))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{BOMB}:9:10: error EG113" in done.stdout
    assert f"{deep}:3:" in done.stdout and "EG113" in done.stdout.split(str(deep))[1]


@pytest.mark.parametrize("module", ["collector.main", "agent.main"])
@pytest.mark.parametrize(
    "text", [BOMB.read_text().replace("lists:", "tags:"), _deep_block()], ids=["bomb", "deep"]
)
def test_both_daemons_refuse_such_a_config_with_exit_2(tmp_path: Path, module: str, text: str) -> None:
    config = tmp_path / "role.yaml"
    config.write_text(text)
    done = _cli(module, "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{config}:" in done.stderr
