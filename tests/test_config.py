"""Both roles' config files: shipped examples load, and every mistake names file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import config as collector_config
from common import agentconfig as agent_config
from common import yamlfile
from common.yamlfile import YamlError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_shipped_examples_are_valid() -> None:
    agent = agent_config.load(EXAMPLES / "agent.yaml")
    assert agent.tags["/srv/db"] == ["database", "crown-jewels"]
    collector = collector_config.load(EXAMPLES / "collector.yaml")
    assert collector.timezone == "Europe/Berlin"
    assert [s.type for s in collector.alerts] == ["jsonl", "stdout"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("collector: 127.0.0.1:50051\ncolector: x\n", 2, "colector", "unknown key"),
        ("collector: 127.0.0.1:50051\ncollector: 127.0.0.1:1\n", 2, "collector", "duplicate key"),
        ("tags:\n  /srv/db: [database]\n  srv/x: [a]\n", 1, "tags", "must be absolute"),
        ("spool:\n  max_events: 5\n", 2, "spool.max_events", "greater than or equal"),
        ("collector: nohost\n", 1, "collector", "host:port"),
        ("collector:\n  - 127.0.0.1:1\n  - nohost\n", 1, "collector", "host:port, got 'nohost'"),
        ("collector: [127.0.0.1:1, 127.0.0.1:1]\n", 1, "collector", "listed twice"),
        ("collector: []\n", 1, "collector", "empty list"),
        ("tags: [\n", 2, "", "invalid YAML"),
    ],
)
def test_agent_config_errors_are_located(tmp_path: Path, text: str, line: int, key: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(YamlError) as err:
        agent_config.load(path)
    assert err.value.path == str(path)
    assert err.value.line == line
    assert err.value.key == key
    assert words in err.value.message


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("alerts:\n  - type: jsonl\n    path: /x\n    pathh: /x\n", 4, "alerts[0].pathh", "unknown key"),
        ("alerts:\n  - type: jsonl\n", 2, "alerts[0].path", "required key is missing"),
        ("alerts:\n  - type: carrier-pigeon\n", 2, "alerts[0]", "does not match any of the expected tags"),
        ("timezone: Mars/Olympus\n", 1, "timezone", "unknown time zone"),
        ("listen: 0.0.0.0:50051\n", 1, "", "only on a loopback address"),
    ],
)
def test_collector_config_errors_are_located(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(YamlError) as err:
        collector_config.load(path)
    assert (err.value.line, err.value.key) == (line, key)
    assert words in err.value.message


def test_every_error_is_reported_for_lint(tmp_path: Path) -> None:
    doc = yamlfile.load(_write(tmp_path, "alerts:\n  - type: jsonl\n    pathh: /x\ncolector: 1\n"))
    found = {
        (e.line, e.key, e.message) for e in yamlfile.validation_errors(doc, collector_config.CollectorConfig)
    }
    assert (3, "alerts[0].pathh", "unknown key") in found
    assert (2, "alerts[0].path", "required key is missing") in found
    assert (4, "colector", "unknown key") in found


def test_collector_takes_one_address_or_a_list_in_order(tmp_path: Path) -> None:
    one = agent_config.load(_write(tmp_path, "collector: 10.0.0.1:50051\n"))
    assert one.collectors == ("10.0.0.1:50051",)
    two = agent_config.load(_write(tmp_path, "collector: [10.0.0.2:50051, 10.0.0.1:50051]\n"))
    assert two.collectors == ("10.0.0.2:50051", "10.0.0.1:50051")


def test_unreadable_file_is_a_located_error(tmp_path: Path) -> None:
    with pytest.raises(YamlError) as err:
        agent_config.load(tmp_path / "missing.yaml")
    assert "cannot read" in err.value.message


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "store: data/collector.db\nalerts:\n  - type: jsonl\n    path: alerts.jsonl\n")
    config = collector_config.load(path)
    assert config.store == str(tmp_path / "data" / "collector.db")
    assert config.alerts[0].type == "jsonl" and config.alerts[0].path == str(tmp_path / "alerts.jsonl")


@pytest.mark.parametrize(
    ("text", "expected"), [("on", "on"), ("off", "off"), ("'on'", "on"), ("auto", "auto")]
)
def test_fanotify_on_off_work_unquoted(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"sensors:\n  fanotify: {text}\n")
    assert agent_config.load(path).sensors.fanotify == expected
