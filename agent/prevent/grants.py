"""Which prevention exceptions the agent honours: those the collector signed for this host.

An officer grants an exception at the collector (`exfilguard exception grant`); the collector
records it, signs it with its Ed25519 evidence key and pushes it in `prevent.exceptions`, with
the key's public half in `prevent.grant_key` (docs/prevention.md, trust model). The agent
takes that key only from a push received over the collector's mTLS stream and pins it in
`STATE_DIR/grant-key`; the copy of the push kept on disk (central-config.json) and agent.yaml
are never trusted for it. Each exception is honoured only when its signature verifies against
the pinned key and it names this host: an entry written into either file by hand is refused
and reported as `prevent.exception_refused`.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

from agent import identity
from agent.sensors import Emit
from common import grants
from common.agentconfig import PreventException, PreventSettings
from common.ecstime import ecs_time
from protos import exfilguard_pb2 as pb
from protos.events import new_event

log = logging.getLogger("exfilguard.agent.prevent")

PIN_FILE = "grant-key"


def pin(state_dir: str | Path, key_b64: str) -> None:
    """Keep the grant key a push over the authenticated stream carried (none: the pin stays)."""
    if not key_b64 or pinned(state_dir) == key_b64:
        return
    identity.write_atomic(Path(state_dir) / PIN_FILE, key_b64.encode())
    log.info("prevent: pinned the collector's grant key %s…", key_b64[:12])


def pinned(state_dir: str | Path) -> str:
    """The pinned grant key (base64), "" when no push has brought one yet."""
    try:
        return (Path(state_dir) / PIN_FILE).read_text(encoding="ascii").strip()[: grants.MAX_KEY_CHARS]
    except (OSError, UnicodeDecodeError):
        return ""


def refusal(grant: PreventException, key_b64: str, host: str) -> str | None:
    """Why `grant` must not be honoured here, None when it may."""
    if not key_b64:
        return "no grant key pinned from the collector yet"
    if not grant.signature:
        return "not signed by the collector (grant exceptions with `exfilguard exception grant`)"
    signed = {**grant.model_dump(include=set(grants.SIGNED_FIELDS)), "until": ecs_time(grant.until)}
    if not grants.verifies(key_b64, grant.signature, signed):
        return ("its signature does not verify against the collector's key "
                "(changed since it was granted, or granted elsewhere)")
    if grant.host.lower() != host.lower():
        return f"granted for host {grant.host!r}, not this one ({host!r})"
    return None


def covering(exceptions: Sequence[PreventException], user: str, serial: str) -> PreventException | None:
    """The exception that lets `user` put data on the device with `serial` now, if any."""
    now = dt.datetime.now(dt.UTC)
    for grant in exceptions:
        if grant.user == user and now < grant.until and (not grant.device or grant.device == serial):
            return grant
    return None


def honoured(settings: PreventSettings, state_dir: str | Path, emit: Emit,
             host: str | None = None) -> PreventSettings:
    """`settings` with only the exceptions that may be honoured; each other one is reported."""
    if not settings.exceptions:
        return settings
    key, host = pinned(state_dir), host or socket.gethostname()
    keep = []
    for grant in settings.exceptions:
        why = refusal(grant, key, host)
        if why is None:
            keep.append(grant)
            continue
        reason = f"prevent exception {grant.id or '(no id)'} for {grant.user} refused: {why}"
        log.warning("prevent: %s", reason)
        emit(new_event("prevent.exception_refused", event=pb.EventInfo(reason=reason[:4096]),
                       user=pb.User(name=grant.user), device=pb.Device(serial=grant.device)))
    if len(keep) == len(settings.exceptions):
        return settings
    return settings.model_copy(update={"exceptions": keep})
