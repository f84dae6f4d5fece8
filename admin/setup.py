"""`exfilguard setup agent|collector`: install the package, configs, user, directories and unit.

    exfilguard setup collector                   # venv in /opt/exfilguard, unit, user, default config
    exfilguard setup agent --enable              # ... and `systemctl enable --now` the agent
    exfilguard setup agent --uninstall [--purge] # keep (or remove) config and state

Exit codes: 0 done; 1 a step failed (the message names it); 2 bad arguments or not root.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from collector import install


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `setup`."""
    p = sub.add_parser(
        "setup", help="install (or uninstall) the agent or the collector on this host",
        description="Install ExfilGuard as a systemd service: a venv under the prefix, default config in "
        "/etc/exfilguard (never overwritten), service user and directories, and the unit. Idempotent.",
    )
    p.add_argument("role", choices=install.ROLES)
    p.add_argument("--prefix", default=install.DEFAULT_PREFIX,
                   help="where the venv goes (default %(default)s)")
    p.add_argument("--root", default="/", help="install under this directory instead of / (staging, tests)")
    p.add_argument("--source", default=None, help="the ExfilGuard source tree to install (default: this one)")
    p.add_argument("--pip-option", action="append", default=[], metavar="OPT",
                   help="passed to pip install (repeatable), e.g. --pip-option=--index-url=URL")
    p.add_argument("--python", default=None, metavar="PATH",
                   help="build the venv on this interpreter (default: this one, or the system's "
                        "python3 when this one is under /root or /home, which the units hide)")
    p.add_argument("--enable", action="store_true", help="also `systemctl enable --now` the service")
    p.add_argument("--uninstall", action="store_true",
                   help="remove the unit and the venv; keep config and state")
    p.add_argument("--purge", action="store_true", help="with --uninstall: also remove config and state")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Install or uninstall; prints one line per step."""
    root = Path(args.root)
    if args.purge and not args.uninstall:
        print("exfilguard setup: --purge goes with --uninstall", file=sys.stderr)
        return 2
    if root.resolve() == Path("/") and os.geteuid() != 0:
        print("exfilguard setup: installing onto this host needs root (or use --root DIR)", file=sys.stderr)
        return 2
    try:
        installation = install.Installation(
            role=args.role,
            source=Path(args.source) if args.source else install.default_source(),
            root=root,
            prefix=args.prefix,
            pip_options=args.pip_option,
            python=args.python,
        )
        actions = installation.uninstall(args.purge) if args.uninstall else installation.install(args.enable)
    except install.InstallError as exc:
        print(f"exfilguard setup {args.role}: {exc}", file=sys.stderr)
        return 1
    for line in actions:
        print(line)
    if not args.uninstall:
        print(f"next: edit {installation.config_path}, then `systemctl enable --now exfilguard-{args.role}`")
    return 0
