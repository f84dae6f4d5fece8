"""Central config on the agent: what the collector pushed, checked, kept on disk, merged over agent.yaml.

The collector sends `AgentConfig{version, yaml}` whenever the version an agent reports
differs from the one the fleet file gives it. The YAML holds only PushedSettings keys
(common/agentconfig.py); local agent.yaml is the fallback and pushed keys win. An empty version
with empty YAML means "no central config for you": back to agent.yaml alone.

The last accepted push is kept 0600 in state_dir/central-config.json, so a restart without
the collector still runs it.

Errors:
    CentralConfigError   a pushed or stored config that cannot run (carries `version`)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from agent import identity
from common import yamlfile
from common.agentconfig import AgentConfig, PushedSettings, apply_pushed
from common.errors import ExfilGuardError

FILE_NAME = "central-config.json"
MAX_YAML_BYTES = 1 << 20  # a tag map of thousands of paths fits many times over
MAX_VERSION_CHARS = 64


class CentralConfigError(ExfilGuardError):
    """A central config that cannot run here; `version` names it, the message says why."""

    def __init__(self, version: str, message: str) -> None:
        self.version = version
        super().__init__(f"central config {version!r}: {message}")


@dataclass(frozen=True)
class PushedConfig:
    """One version of central config: its YAML as sent and the settings in it."""

    version: str
    yaml: str
    settings: dict[str, Any]

    @property
    def empty(self) -> bool:
        """True for "no central config": the agent runs agent.yaml alone."""
        return not self.version and not self.settings


def parse(version: str, text: str) -> PushedConfig:
    """Check a pushed config against the agent's own schema; raises CentralConfigError."""
    if len(version) > MAX_VERSION_CHARS or not version.isprintable():
        raise CentralConfigError(version[:MAX_VERSION_CHARS], "version is not a short printable string")
    if len(text.encode()) > MAX_YAML_BYTES:
        raise CentralConfigError(version, f"larger than {MAX_YAML_BYTES} bytes")
    if not version and text.strip():
        raise CentralConfigError(version, "settings without a version")
    try:
        doc = yamlfile.parse(text, f"<central config {version or 'none'}>")
        if doc.data is not None and not isinstance(doc.data, dict):
            raise doc.error((), "expected a mapping of agent.yaml keys")
        yamlfile.validate(doc, PushedSettings)
    except yamlfile.YamlError as exc:
        raise CentralConfigError(version, str(exc)) from exc
    return PushedConfig(version, text, dict(doc.data or {}))


def effective(local: AgentConfig, pushed: PushedConfig | None) -> AgentConfig:
    """The config to run: `pushed` merged over the local agent.yaml; raises CentralConfigError."""
    if pushed is None or pushed.empty:
        return local
    try:
        return apply_pushed(local, pushed.settings)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CentralConfigError(pushed.version, f"{where}: {first['msg']}") from exc


class CentralConfigFile:
    """state_dir/central-config.json: the last central config this agent accepted."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / FILE_NAME

    def load(self) -> PushedConfig | None:
        """The stored config, None when there is none; raises CentralConfigError when it is unusable."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CentralConfigError("", f"cannot read {self.path}: {exc}") from exc
        try:
            stored = json.loads(raw)
            version, text = str(stored["version"]), str(stored["yaml"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CentralConfigError("", f"{self.path} is damaged: {exc}") from exc
        return parse(version, text)

    def save(self, pushed: PushedConfig) -> None:
        """Keep `pushed` for the next start (0600, atomic); "no central config" removes the file."""
        if pushed.empty:
            self.path.unlink(missing_ok=True)
            return
        data = json.dumps({"version": pushed.version, "yaml": pushed.yaml}).encode()
        identity.write_atomic(self.path, data)
