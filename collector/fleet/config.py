"""Central agent config: the fleet file an admin edits, each agent's effective config, and the push.

collector.yaml `agent_config: /etc/exfilguard/fleet.yaml` names one YAML file:

    defaults:                      # every agent
      tags: {/srv/db: [database]}
      heartbeat_seconds: 10
    groups:                        # in file order; an agent may be in several
      finance:
        hosts: ["fin-*"]           # host-name globs (case-insensitive)
        agents: []                 # and/or agent ids
        settings: {tags: {/srv/ledger: [finance]}}
    hosts:                         # a host-name glob or an agent id -> settings, in file order
      fin-ws-07: {tags: {/srv/db: []}}     # [] removes a tagged path (here, or agent.yaml's)

Settings are agent.yaml's pushable keys (common/agentconfig.py PushedSettings: tags, removable,
sensors, prevent, heartbeat_seconds, batch, log_level), checked against the agent's own schema, so a
bad push is refused here and not by 500 agents. Levels merge defaults < groups < hosts:
mappings key by key (tags path by path), other values replaced. The agent merges the result
over its agent.yaml the same way.

An agent's config version is a short SHA-256 of its canonical effective settings ("" when
nothing applies: agent.yaml alone). The collector sends `CollectorMessage.config` when the
version an agent reports (hello, then each heartbeat) differs, at hello and whenever a reload
changes it. A reload (file changed, or SIGHUP) that fails keeps the previous fleet config.

Prevention exceptions are not written here (the agent honours only signed ones): officers grant
them with `exfilguard exception grant`, and each host's active grants are merged over its
settings last (collector/fleet/grants.py), so granting, revoking or expiry changes the version.
Without a fleet file the grants alone are pushed.

Errors: yamlfile.YamlError (file:line:key) for a bad fleet file.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pydantic
import yaml
from pydantic import Field

from collector.fleet.grants import ActiveGrants
from common import yamlfile
from common.agentconfig import AgentConfig, PushedSettings, apply_pushed, overlay
from protos import exfilguard_pb2 as pb

log = logging.getLogger("exfilguard.collector.fleetconfig")

MAX_FILE_BYTES = 4 << 20
_SEND_SECONDS = 2.0  # how long a push may wait for room in one stream's outgoing queue
VERSION_CHARS = 16  # 64 bits of SHA-256: collisions among one fleet's configs are not a concern

_Pattern = Annotated[str, Field(min_length=1, max_length=256)]


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class FleetGroup(_Strict):
    """A named set of agents (by host-name glob and/or agent id) and the settings they get."""

    hosts: Annotated[list[_Pattern], Field(max_length=10_000)] = []
    agents: Annotated[list[_Pattern], Field(max_length=100_000)] = []
    settings: PushedSettings | None = None


class FleetFile(_Strict):
    """The whole fleet file."""

    defaults: PushedSettings | None = None
    groups: Annotated[dict[str, FleetGroup], Field(max_length=10_000)] = {}
    hosts: Annotated[dict[_Pattern, PushedSettings | None], Field(max_length=100_000)] = {}


@dataclass(frozen=True)
class Effective:
    """One agent's central config: the merged settings, their version, and which levels made them."""

    version: str
    settings: dict[str, Any]
    sources: tuple[str, ...]

    def yaml(self) -> str:
        """The settings in agent.yaml form, as sent to the agent."""
        return yaml.safe_dump(self.settings, sort_keys=True) if self.settings else ""

    def message(self) -> pb.CollectorMessage:
        """The CollectorMessage carrying this config."""
        return pb.CollectorMessage(config=pb.AgentConfig(version=self.version, yaml=self.yaml()))


def version_of(settings: dict[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of `settings`; "" for no settings at all."""
    if not settings:
        return ""
    # default=str: a YAML timestamp (prevent.exceptions[].until) is a datetime, and hashes as its text
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:VERSION_CHARS]


@dataclass(frozen=True)
class _Group:
    name: str
    hosts: tuple[str, ...]
    agents: frozenset[str]
    settings: dict[str, Any]


@dataclass(frozen=True)
class FleetConfig:
    """A loaded, valid fleet file."""

    path: str
    defaults: dict[str, Any] = field(default_factory=dict)
    groups: tuple[_Group, ...] = ()
    hosts: tuple[tuple[str, dict[str, Any]], ...] = ()
    digest: str = ""  # SHA-256 of the file as read, for logs

    def effective(self, agent_id: str, host: str, grants: ActiveGrants | None = None) -> Effective:
        """The config for this agent: defaults, then its groups, then matching hosts entries, then
        the grants officers made for its host (collector/fleet/grants.py)."""
        host_l = host.lower()
        settings: dict[str, Any] = {}
        sources: list[str] = []
        if self.defaults:
            settings = _merge(settings, self.defaults)
            sources.append("defaults")
        for group in self.groups:
            if agent_id in group.agents or any(fnmatch.fnmatchcase(host_l, p.lower()) for p in group.hosts):
                settings = _merge(settings, group.settings)
                sources.append(f"groups.{group.name}")
        for key, overrides in self.hosts:
            if key == agent_id or fnmatch.fnmatchcase(host_l, key.lower()):
                settings = _merge(settings, overrides)
                sources.append(f"hosts.{key}")
        if grants is not None and (granted := grants.settings(host)):
            settings = _merge(settings, granted)
            sources.append("grants")
        return Effective(version_of(settings), settings, tuple(sources))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    # The agent's own overlay; `[]` tag entries stay in: they must reach the agent to remove
    # a path from its agent.yaml.
    return overlay(base, top)


def load(path: str | Path) -> FleetConfig:
    """Read and check a fleet file; raises YamlError naming file:line:key."""
    name = str(path)
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise yamlfile.YamlError(name, 0, 0, "", f"cannot read: {exc}") from exc
    if size > MAX_FILE_BYTES:
        raise yamlfile.YamlError(name, 0, 0, "", f"larger than {MAX_FILE_BYTES} bytes")
    doc = yamlfile.load(path)
    if doc.data is not None and not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping with defaults, groups and hosts")
    yamlfile.validate(doc, FleetFile)
    data: dict[str, Any] = doc.data or {}
    _check_agent_schema(doc, ("defaults",), data.get("defaults"))
    groups = []
    for group_name, raw in (data.get("groups") or {}).items():
        group = raw or {}
        _check_agent_schema(doc, ("groups", group_name, "settings"), group.get("settings"))
        groups.append(_Group(
            group_name, tuple(group.get("hosts") or ()), frozenset(group.get("agents") or ()),
            _clean(group.get("settings")),
        ))
    hosts = []
    for key, overrides in (data.get("hosts") or {}).items():
        _check_agent_schema(doc, ("hosts", key), overrides)
        hosts.append((key, _clean(overrides)))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return FleetConfig(name, _clean(data.get("defaults")), tuple(groups), tuple(hosts), digest)


def _clean(settings: Any) -> dict[str, Any]:
    """A settings mapping without its unset (null) keys."""
    return {k: v for k, v in (settings or {}).items() if v is not None}


def _check_agent_schema(doc: yamlfile.Document, loc: yamlfile.Location, settings: Any) -> None:
    """The settings merged over a default agent.yaml must be a valid AgentConfig (the agent's check)."""
    if not settings:
        return
    prevent = settings.get("prevent") if isinstance(settings, dict) else None
    for key in ("exceptions", "grant_key"):
        if isinstance(prevent, dict) and prevent.get(key):
            # unsigned here: the agent would refuse it; grants are made, signed and recorded by the CLI
            raise doc.error((*loc, "prevent", key), "grant exceptions with `exfilguard exception grant`")
    try:
        apply_pushed(AgentConfig(), _clean(settings))
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        sub = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        raise doc.error((*loc, *sub), str(err["msg"])) from exc


class FleetSource:
    """The fleet file, reloaded when it changes (`check()`, mtime polling) or on request (`reload()`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.snapshot = self._stat()
        self.current = load(self.path)  # a broken file at start is the caller's error to report
        self.reloads = 0
        self.failures = 0
        self.last_error: yamlfile.YamlError | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = Path(self.path).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check(self) -> bool | None:
        """Reload if the file changed: True loaded, False refused (previous kept), None unchanged."""
        snapshot = self._stat()
        if snapshot == self.snapshot:
            return None
        self.snapshot = snapshot
        return self.reload()

    def reload(self) -> bool:
        """Load the file now; on any error keep the running fleet config. True when the new one runs."""
        self.snapshot = self._stat()
        try:
            fleet = load(self.path)
        except yamlfile.YamlError as exc:
            self.failures += 1
            self.last_error = exc
            log.error("fleet config reload refused: %s; still running %s", exc, self.current.digest[:12])
            return False
        old, self.current = self.current, fleet
        self.reloads += 1
        self.last_error = None
        log.info("fleet config reloaded: %s -> %s", old.digest[:12], fleet.digest[:12])
        return True


Send = Callable[[pb.CollectorMessage], Awaitable[None]]
_NO_FLEET_FILE = FleetConfig("")


@dataclass(eq=False)
class PushStream:
    """One connected agent stream as the pusher sees it."""

    agent_id: str
    host: str
    running: str  # the version the agent last reported
    sent: str | None  # the version last sent on this stream (not sent again on it)
    send: Send


class ConfigPusher:
    """Decides when an agent gets its config: at hello and after a reload, when its version differs."""

    def __init__(self, source: FleetSource | None, grants: ActiveGrants | None = None) -> None:
        self.source = source  # None: no fleet file, only grants are pushed
        self.grants = grants
        self._streams: set[PushStream] = set()
        self.pushed = 0

    def effective(self, agent_id: str, host: str) -> Effective:
        """The agent's central config now: the fleet file's, with its host's grants."""
        fleet = self.source.current if self.source is not None else _NO_FLEET_FILE
        return fleet.effective(agent_id, host, self.grants)

    def on_hello(self, hello: pb.Hello) -> pb.CollectorMessage | None:
        """The config message to send right after this hello, or None when the agent runs its version."""
        effective = self.effective(hello.agent_id, hello.hostname)
        if effective.version == hello.config_version:
            return None
        self.pushed += 1
        log.info(
            "pushing agent config",
            extra={"agent_id": hello.agent_id, "config_version": effective.version,
                   "agent_config_version": hello.config_version},
        )
        return effective.message()

    def attach(self, hello: pb.Hello, sent: str | None, send: Send) -> PushStream:
        """Track a stream for pushes after reloads; `send` queues a message on it."""
        stream = PushStream(hello.agent_id, hello.hostname, hello.config_version, sent, send)
        self._streams.add(stream)
        return stream

    def detach(self, stream: PushStream) -> None:
        """The stream ended."""
        self._streams.discard(stream)

    @staticmethod
    def reported(stream: PushStream, version: str) -> None:
        """The agent said (heartbeat) which version it runs."""
        stream.running = version

    async def push_changed(self) -> int:
        """After a reload or a change of grants: send each connected agent its config if its version
        changed; how many sent."""
        count = 0
        for stream in list(self._streams):
            effective = self.effective(stream.agent_id, stream.host)
            if effective.version in (stream.running, stream.sent):
                continue
            log.info("pushing agent config", extra={"agent_id": stream.agent_id,
                                                    "config_version": effective.version})
            try:
                # Bounded: a stream that stopped draining (going away) must not hold up the rest.
                await asyncio.wait_for(stream.send(effective.message()), _SEND_SECONDS)
            except Exception:  # its next hello (or the next reload) gets the config
                log.warning("config push to agent %s not queued; it gets it at its next hello",
                            stream.agent_id)
                continue
            stream.sent = effective.version
            count += 1
        self.pushed += count
        return count
