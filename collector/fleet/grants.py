"""The grants an officer made (`exfilguard exception grant`), as each host's push carries them.

The store holds every grant (collector/store/grants.py); `ActiveGrants` holds those neither
revoked nor expired, by host, refreshed by the server every second or so. `FleetConfig.effective`
merges a host's active grants into its `prevent.exceptions`, with the collector's public
grant-signing key in `prevent.grant_key`, so a grant, a revocation or an expiry changes that
host's config version and is pushed at once (collector/fleet/config.py). The agent honours a
grant only when its signature verifies (agent/prevent/grants.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.store.grants import GrantRecord


def pushed(grant: GrantRecord) -> dict[str, str]:
    """A grant as one `prevent.exceptions` entry of the push (what the agent verifies)."""
    return {"id": grant.id, "host": grant.host, "user": grant.user, "device": grant.device,
            "until": grant.until, "note": grant.note, "granted_by": grant.granted_by,
            "signature": grant.signature}


class ActiveGrants:
    """The active grants by host (lower case), in the pushed form, and the key that signed them."""

    def __init__(self, grant_key: str) -> None:
        self.grant_key = grant_key  # the collector's public key, raw Ed25519 in base64
        self._by_host: dict[str, tuple[dict[str, str], ...]] = {}

    def refresh(self, active: Sequence[GrantRecord]) -> bool:
        """Take the store's active grants; True when some host's grants changed (push them)."""
        by_host: dict[str, list[dict[str, str]]] = {}
        for grant in active:
            by_host.setdefault(grant.host.lower(), []).append(pushed(grant))
        fresh = {host: tuple(entries) for host, entries in by_host.items()}
        changed, self._by_host = fresh != self._by_host, fresh
        return changed

    def settings(self, host: str) -> dict[str, Any]:
        """The pushed settings this host's grants add ({} when it has none)."""
        entries = self._by_host.get(host.lower())
        if not entries or not self.grant_key:
            return {}
        return {"prevent": {"exceptions": [dict(e) for e in entries], "grant_key": self.grant_key}}
