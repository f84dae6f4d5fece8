"""Grants end to end: a real collector process, a real agent process with prevent.removable_writes:
block, and a loop-device stick. `exfilguard exception grant` lets exactly the named user copy tagged
data while it is in force; after `revoke` the copy is blocked again; an exception edited into the
agent's stored push is refused and reported."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.loopstick import LoopStick
from tests.e2e.harness import Pipeline, wait_for
from tests.helpers import run_cli

pytestmark = pytest.mark.root

HOST = socket.gethostname()
POLICIES = Path(__file__).resolve().parents[2] / "policies"
_AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


@pytest.fixture
def tagged() -> Iterator[Path]:
    """A tagged tree both root and nobody can read (pytest's tmp_path is root's only)."""
    root = Path(tempfile.mkdtemp(prefix="eg-grants-"))
    try:
        root.chmod(0o755)
        (root / "customers.db").write_bytes(os.urandom(20_000))
        (root / "customers.db").chmod(0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pipeline(tmp_path: Path, tagged: Path) -> Iterator[Pipeline]:
    base = tmp_path / "pipe"
    base.mkdir()
    pipe = Pipeline(base)
    shutil.copy(POLICIES / "prevent.yaml", pipe.collector_dir / "policies" / "prevent.yaml")
    with pipe.agent_config.open("a") as f:
        # decisions under test, not timeouts: a loaded machine must not turn them into fail-open
        f.write(f"tags:\n  {tagged}: [database]\n"
                "prevent:\n  removable_writes: block\n  decision_timeout_ms: 5000\n")
    yield pipe
    pipe.close()


class Copier:
    """`cp` of the tagged file onto the stick as a user; each attempt writes a new name."""

    def __init__(self, source: Path, point: Path) -> None:
        self.source, self.point, self.attempts = source, point, 0
        self.last = ""

    def copies(self, user: str) -> bool:
        self.attempts += 1
        target = self.point / f"{user}-{self.attempts}.db"
        argv = ["cp", str(self.source), str(target)]
        # a job of its own, as a terminal would start it
        done = subprocess.run([*_AS_NOBODY, *argv] if user == "nobody" else argv, capture_output=True,
                              text=True, timeout=60, start_new_session=True, check=False)
        self.last = done.stderr
        return done.returncode == 0

    def blocked(self, user: str) -> bool:
        return not self.copies(user)


def _cli(pipe: Pipeline, *args: str) -> dict[str, Any]:
    done = run_cli("exception", *args, "--config", str(pipe.collector_config), "--json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _running(pipe: Pipeline) -> str | None:
    """The central config version the agent runs, once it is the one the collector gives it."""
    agents = pipe.agents_json()
    if len(agents) != 1 or agents[0]["config_version"] != agents[0].get("config_expected", ""):
        return None
    return str(agents[0]["config_version"])


def _settled(pipe: Pipeline, cp: Copier, before: str | None) -> str:
    """Wait until the agent runs a config other than `before`, and its guard (rebuilt) refuses root."""
    wait_for(lambda: _running(pipe) not in (None, before), 30, "the agent to run the new config",
             pipe.diagnose)
    wait_for(lambda: cp.blocked("root"), 60, "the rebuilt guard to refuse root's copy", pipe.diagnose)
    version = _running(pipe)
    assert version is not None
    return version


def _events(pipe: Pipeline, action: str) -> list[dict[str, Any]]:
    return [e for e in pipe.delivered() if e["event.action"] == action]


def _alerts(pipe: Pipeline, policy: str) -> list[dict[str, Any]]:
    path = pipe.collector_dir / "alerts.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [a for a in map(json.loads, lines) if a.get("policy.id") == policy]


def test_a_grant_lets_exactly_its_user_copy_until_revoked_and_a_tampered_one_is_refused(
        pipeline: Pipeline, tagged: Path, loop_stick: Callable[..., LoopStick]) -> None:
    stick = loop_stick(label=f"GR{os.getpid() % 10000}", serial=f"EGGR{os.getpid()}")
    point = stick.mount()
    point.chmod(0o1777)  # nobody may write there: only the guard stands in the way
    cp = Copier(tagged / "customers.db", point)
    pipeline.start_collector()
    pipeline.start_agent(sensors=True)
    wait_for(lambda: cp.blocked("root") and cp.blocked("nobody"), 60, "the guard to refuse tagged copies",
             pipeline.diagnose)

    start = _running(pipeline)
    granted = _cli(pipeline, "grant", "--host", HOST, "--user", "nobody", "--for", "1h",
                   "--note", "INC-4711 imaging", "--by", "carol")
    first = _settled(pipeline, cp, start)
    applied = [e for e in _events(pipeline, "agent.config") if e.get("exfilguard.config_version") == first]
    assert applied and "sensors unchanged" in applied[0]["event.reason"]  # the stick stayed guarded
    assert cp.copies("nobody"), cp.last
    assert cp.blocked("root")  # exactly the named user
    why = f"allowed by grant {granted['id']} (granted by carol: INC-4711 imaging) for nobody"
    wait_for(lambda: bool(_events(pipeline, "file.allow")), 30, "file.allow at the collector",
             pipeline.diagnose)
    allowed = _events(pipeline, "file.allow")[0]
    assert why in allowed["event.reason"] and allowed["user.name"] == "nobody"
    wait_for(lambda: bool(_alerts(pipeline, "prevent-copy-allowed-by-grant")), 30, "the alert",
             pipeline.diagnose)
    alert = _alerts(pipeline, "prevent-copy-allowed-by-grant")[0]
    assert why in alert["summary"] and alert["severity"] == "medium"
    kept = point / f"nobody-{cp.attempts - 1}.db"  # the granted copy: not quarantined as tagged data
    wait_for(lambda: any(e["file.path"] == str(kept) for e in _events(pipeline, "file.copy")), 30,
             "the granted copy to be reported", pipeline.diagnose)

    _cli(pipeline, "revoke", granted["id"])
    revoked = _settled(pipeline, cp, first)
    assert cp.blocked("nobody")

    # granted again, then the agent's stored copy of the push edited: root grants himself
    again = _cli(pipeline, "grant", "--host", HOST, "--user", "nobody", "--for", "1h", "--note", "INC-4712")
    _settled(pipeline, cp, revoked)
    assert cp.copies("nobody"), cp.last
    assert pipeline.agent is not None
    pipeline.agent.terminate()
    stored = pipeline.agent_state / "central-config.json"
    pushed = json.loads(stored.read_text())
    assert "user: nobody" in pushed["yaml"]
    pushed["yaml"] = pushed["yaml"].replace("user: nobody", "user: root")  # the version stays
    stored.write_text(json.dumps(pushed))
    pipeline.start_agent(sensors=True)
    wait_for(lambda: bool(_events(pipeline, "prevent.exception_refused")), 60,
             "the tampered grant to be refused", pipeline.diagnose)
    refused = _events(pipeline, "prevent.exception_refused")[0]
    assert again["id"] in refused["event.reason"] and "does not verify" in refused["event.reason"]
    wait_for(lambda: cp.blocked("root"), 60, "root's copy to be refused", pipeline.diagnose)
    assert cp.blocked("nobody")
    wait_for(lambda: bool(_alerts(pipeline, "prevent-exception-refused")), 30, "the alert", pipeline.diagnose)
    # seconds after it was reported, the granted copy is still where its user put it
    assert kept.read_bytes() == (tagged / "customers.db").read_bytes()
    assert not [e for e in _events(pipeline, "file.quarantine") if e["file.path"] == str(kept)]
