"""`exfilguard`: the admin CLI. Each command group is a module registered in COMMANDS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from admin.terminal import Exit
from collector import __version__

# Each module has `register(subparsers)`, adding its sub-commands with `set_defaults(run=...)`,
# where `run(args) -> int` is the exit code.
Run = Callable[[argparse.Namespace], int]


def _modules() -> list[ModuleType]:
    # Imported here so `exfilguard --help` stays fast and one broken command cannot break the others.
    from admin import agents
    from admin import alerts as alerts_cmd
    from admin import certs as certs_cmd
    from admin import console as console_cmd
    from admin import demo as demo_cmd
    from admin import devices as devices_cmd
    from admin import exceptions as exception_cmd
    from admin import export as export_cmd
    from admin import fleetconfig as fleet_cmd
    from admin import forward as forward_cmd
    from admin import keys as key_cmd
    from admin import policy as policy_cmd
    from admin import quarantine as quarantine_cmd
    from admin import retention as prune_cmd
    from admin import setup as setup_cmd
    from admin import users as users_cmd
    from admin import verify as verify_cmd

    return [
        agents,
        certs_cmd,
        export_cmd,
        verify_cmd,
        key_cmd,
        prune_cmd,
        alerts_cmd,
        devices_cmd,
        exception_cmd,
        policy_cmd,
        quarantine_cmd,
        setup_cmd,
        demo_cmd,
        fleet_cmd,
        users_cmd,
        console_cmd,
        forward_cmd,
    ]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs)."""
    parser = argparse.ArgumentParser(prog="exfilguard", description="ExfilGuard admin CLI")
    parser.add_argument("--version", action="version", version=f"exfilguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `exfilguard` console script."""
    args = build_parser().parse_args(argv)
    run: Run = args.run
    try:
        return run(args)
    except Exit as stop:  # the command said why
        return stop.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
