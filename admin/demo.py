"""`exfilguard demo`: plug in a loop-device "USB stick", copy a tagged directory onto it, show the alerts.

Needs root (loop devices, mount, udev) and a running collector and agent whose agent.yaml
tags `--source` and treats loop devices as removable (scripts/quickstart sets both up).
The stick is unmounted, detached and deleted afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from admin import terminal
from collector import config as collector_config
from collector.store import Store, StoreError, open_store
from collector.store.base import EventFilter
from common import ecstime
from common.yamlfile import YamlError

SERIAL = "EG-DEMO-0001"
LABEL = "DEMO-STICK"
POLL_SECONDS = 0.25


def register(subparsers: Any) -> None:
    """Add the `demo` command."""
    what = "copy a tagged directory onto a loop-device USB stick and show the alerts (root)"
    parser = terminal.command(subparsers, "demo", what, __doc__)
    parser.add_argument("--config", default=None, help="the collector's config (default: $EXFILGUARD_CONFIG)")
    parser.add_argument("--source", required=True, help="a directory the agent tags (e.g. a sample database)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for alerts (default 30)")
    parser.add_argument("--keep-running", action="store_true", help="keep showing alerts until Ctrl-C")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Plug, wait for the agent to see the mount, copy, print alerts, clean up."""
    if os.geteuid() != 0:
        print("exfilguard demo: needs root (loop devices, mount, udev)", file=sys.stderr)
        return 2
    source = Path(args.source)
    if not source.is_dir():
        print(f"exfilguard demo: {source}: not a directory", file=sys.stderr)
        return 2
    try:
        config = collector_config.load(args.config or collector_config.default_path())
    except YamlError as exc:
        print(f"exfilguard demo: bad config: {exc}", file=sys.stderr)
        return 2
    from lab.loopstick import LoopStick, LoopStickError, ensure_udevd

    # A TERM (the quickstart stopping) must still unmount and delete the stick.
    signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="exfilguard-demo-"))
    stick = LoopStick(workdir, label=LABEL, serial=SERIAL, vendor="ExfilGuard", model="Demo_Stick")
    try:
        store = open_store(config.store, readonly=True)
    except StoreError as exc:
        print(f"exfilguard demo: {exc}", file=sys.stderr)
        return 1
    try:
        ensure_udevd()
        stick.create()
        stick.plug()
        mount_point = stick.mount()
        say(f"stick {LABEL} (serial {SERIAL}) mounted at {mount_point}")
        if not wait_for_mount(store, str(mount_point), started, args.timeout):
            say("the agent did not report the mount; is it running with removable.include_loop: true?")
            return 1
        target = mount_point / source.name
        # What an insider types: the alert then names cp, its command line and the user.
        subprocess.run(["cp", "-r", str(source), f"{mount_point}/"], check=True)
        os.sync()
        files = [p for p in target.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        say(f"copied {len(files)} files, {size / (1 << 20):.1f} MiB: cp -r {source} {mount_point}/")
        show_alerts(store, started, args.timeout, args.keep_running)
        return 0
    except (LoopStickError, subprocess.CalledProcessError) as exc:
        print(f"exfilguard demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        store.close()
        try:
            stick.remove()
        except LoopStickError as exc:
            print(f"exfilguard demo: cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        say("stick removed")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def say(text: str) -> None:
    """One line to stdout, flushed (the quickstart prefixes it)."""
    print(text, flush=True)


def wait_for_mount(store: Store, point: str, since: dt.datetime, timeout: float) -> bool:
    """Poll the store until the agent's device.mount of `point` is stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for event in store.events(EventFilter(since=since, action="device.mount")):
                if point in (event.get("exfilguard.mount.point"), event.get("file.path")):
                    return True
        except StoreError:
            pass  # the collector may be creating the store right now
        time.sleep(POLL_SECONDS)
    return False


def show_alerts(store: Store, since: dt.datetime, timeout: float, forever: bool) -> None:
    """Print alerts raised since `since` as they arrive; stop `timeout` s after the last one."""
    seen: set[str] = set()
    stamp = ecstime.ecs_time(since)
    deadline = time.monotonic() + timeout
    while forever or time.monotonic() < deadline:
        try:
            alerts = store.alerts(limit=1000, since=stamp)
        except StoreError:
            alerts = []
        for alert in alerts:
            if alert["id"] in seen:
                continue
            seen.add(alert["id"])
            deadline = time.monotonic() + min(timeout, 5.0)  # a few more seconds for the rest
            text = " ".join(str(alert.get("summary")).split())
            say(f"ALERT {alert.get('severity')} {alert.get('policy.id')}: {text}")
        time.sleep(POLL_SECONDS)
    if not seen:
        say("no new alerts: check the policies and the agent's tags")
        say("(repeats within the suppression window are folded into one follow-up alert)")
