"""docs/siem.md's recipes are collector.yaml that loads: every YAML block in it, as written, is a
valid `alerts:` / `forward:` section (a renamed or removed key fails here, not at an admin's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from collector import config
from collector.alerts.dispatch import Dispatcher
from common.yamlfile import YamlError
from tests.siem import samples
from tests.siem.receivers import HttpReceiver

DOC = Path(__file__).resolve().parents[2] / "docs" / "siem.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def load_recipe(tmp_path: Path, block: str) -> config.CollectorConfig:
    doc = {"listen": "127.0.0.1:50051", "store": "collector.db", "policies": [], **yaml.safe_load(block)}
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config.load(path)


def test_the_recipes_are_there() -> None:
    sections = [set(yaml.safe_load(block)) for block in BLOCKS]
    assert len(BLOCKS) >= 6 and all(s <= {"alerts", "forward"} for s in sections)
    text = DOC.read_text()
    for recipe in ("### Splunk", "### Elastic", "### A syslog SIEM", "### Slack"):
        assert recipe in text


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{n}" for n in range(len(BLOCKS))])
def test_every_recipe_loads(tmp_path: Path, block: str) -> None:
    loaded = load_recipe(tmp_path, block)
    written = yaml.safe_load(block)
    if "alerts" in written:  # (without, the collector's default: stdout)
        assert len(loaded.alerts) == len(written["alerts"])
    assert len(loaded.forward) == len(written.get("forward", []))


def test_a_recipe_with_a_wrong_key_would_fail(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "template: slack" in b).replace("min_severity:", "min_severity_:", 1)
    with pytest.raises(YamlError):
        load_recipe(tmp_path, block)


def test_the_jinja_example_renders_json_for_a_real_post(tmp_path: Path) -> None:
    (example,) = re.findall(r"```jinja\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    (tmp_path / "hook.json").write_text(example)
    receiver = HttpReceiver()
    try:
        block = f"alerts:\n  - type: webhook\n    url: {receiver.url}/hook\n    template: hook.json\n"
        dispatcher = Dispatcher.from_config(load_recipe(tmp_path, block).alerts)
        alert = samples.alert()
        dispatcher.send(alert)
        assert dispatcher.flush(10)
        dispatcher.close()
        (got,) = receiver.wait_for(1)
    finally:
        receiver.close()
    assert got.json() == {
        "text": f"[{alert['severity'].upper()}] {alert['summary']}",
        "user": alert["user.name"],
        "stick": alert["device.serial"],
    }
