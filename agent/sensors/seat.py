"""Who sits at the machine: the user of the active session on seat0, as systemd-logind records it.

A device plugged in or pulled out has no process behind it, so its events name the user of the
seat's active session instead (`user.id`, `user.name`): the person in front of the screen and the
USB ports. logind keeps that in /run/systemd/seats/seat0 (`ACTIVE=` session id, `ACTIVE_UID=`)
and /run/systemd/sessions/ID (`UID=`, `USER=`), the files sd_seat_get_active() reads. No
logind, no seat0 (a server reached over SSH) or nobody logged in at it: nobody is named.
"""

from __future__ import annotations

import os

from agent.sensors import procinfo

RUN = "/run/systemd"
_LIMIT = 8192


def _fields(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as file:  # noqa: PTH123 - a few hundred bytes, read once per device event
            text = file.read(_LIMIT).decode("utf-8", "replace")
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def seat_user(run: str = RUN, seat: str = "seat0") -> tuple[int, str] | None:
    """(uid, account name) of the seat's active session's user; None when nobody is at it."""
    active = _fields(os.path.join(run, "seats", seat))  # noqa: PTH118
    session = active.get("ACTIVE", "")
    details = _fields(os.path.join(run, "sessions", session)) if session.isalnum() else {}  # noqa: PTH118
    uid_text = active.get("ACTIVE_UID") or details.get("UID", "")
    if not uid_text.isdigit():
        return None
    uid = int(uid_text)
    name = details.get("USER", "") if details.get("UID") == uid_text else ""
    return uid, (name or procinfo.user_name(uid))
