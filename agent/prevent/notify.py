"""The user's side of a refusal: a journal line always, a desktop notification where one can show.

A notification goes to every graphical session of the user (a session bus under
/run/user/UID) through `notify-send`, run as that user, never waited for: a slow or missing
desktop must not hold up a decision.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import threading

log = logging.getLogger("exfilguard.prevent")

_RUN_USER = "/run/user"


def tell_user(uid: int, title: str, body: str) -> None:
    """Log `title: body` (the journal line) and show it on the user's desktop if there is one."""
    log.warning("%s: %s", title, body)
    if uid < 0:
        return
    bus = f"{_RUN_USER}/{uid}/bus"
    tool = shutil.which("notify-send")
    if tool is None or not os.path.exists(bus):  # noqa: PTH110 - hot path, no Path object
        return
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return
    env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}", "PATH": "/usr/bin:/bin",
           "XDG_RUNTIME_DIR": f"{_RUN_USER}/{uid}"}
    argv = [tool, "--app-name=ExfilGuard", "--urgency=critical", title, body]
    if os.geteuid() == 0 and uid != 0:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={pwd.getpwnam(name).pw_gid}", "--init-groups", *argv]
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        log.debug("notify-send for uid %d failed: %s", uid, exc)
        return
    threading.Thread(target=proc.wait, name="exfilguard-notify", daemon=True).start()  # reap it
