"""Which removable devices are approved: an in-memory view of the store's device approvals.

An approval names a serial and a scope: everyone (`all`), one user (`user`), or a peer group
(`group`). The engine asks twice per event, so the view is two dicts, rebuilt whole from the
store when the store says approvals changed (collector/store/devices.py keeps the rows).
"""

from __future__ import annotations

from collections.abc import Iterable

from collector.store.devices import Approval


class ApprovalView:
    """Approved serials: for everyone, and per user or group."""

    def __init__(self, approvals: Iterable[Approval] = ()) -> None:
        self._view: tuple[frozenset[str], dict[str, frozenset[tuple[str, str]]]] = (frozenset(), {})
        self.replace(approvals)

    def replace(self, approvals: Iterable[Approval]) -> None:
        """Swap in a new set of approvals (readers see the old or the new view, never half)."""
        everyone: set[str] = set()
        scoped: dict[str, set[tuple[str, str]]] = {}
        for approval in approvals:
            if approval.scope == "all":
                everyone.add(approval.serial)
            else:
                scoped.setdefault(approval.serial, set()).add((approval.scope, approval.subject))
        # One assignment: a reader on another thread sees the old view or the new one.
        self._view = (frozenset(everyone), {k: frozenset(v) for k, v in scoped.items()})

    def approved(self, serial: str) -> bool:
        """Approved for everyone."""
        return serial in self._view[0]

    def approved_for(self, serial: str, user: str, group: str) -> bool:
        """Approved for this user: for everyone, for them by name, or for their group."""
        everyone, scoped = self._view
        if serial in everyone:
            return True
        scopes = scoped.get(serial)
        return scopes is not None and (("user", user) in scopes or ("group", group) in scopes)
