"""Run a daemon under the restrictions its unit asks systemd for, without systemd.

`python -m tests.deploy.sandbox UNIT_FILE -- COMMAND...` applies, then execs COMMAND:
  - CapabilityBoundingSet= (for root, what survives exec), NoNewPrivileges=
  - MemoryDenyWriteExecute= (as the kernel's PR_SET_MDWE, the same W^X rule)
  - SystemCallFilter= (allow list with ~ removals, groups expanded by `systemd-analyze
    syscall-filter`) with SystemCallErrorNumber=, loaded with libseccomp like systemd does.
It exists so the tests can show the units' choices do not break the real daemons.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
SCMP_ACT_ALLOW = 0x7FFF0000
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
CAPABILITY_NUMBERS = {
    "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SETGID": 6, "CAP_SETUID": 7,
    "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_NICE": 23, "CAP_LEASE": 28,
}


def service_settings(unit: Path) -> dict[str, list[str]]:
    """[Service] directive -> values in order."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@functools.cache
def expand(name: str) -> frozenset[str]:
    """A syscall or @group as the set of syscall names (groups via systemd-analyze)."""
    if not name.startswith("@"):
        return frozenset({name})
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                         check=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= expand(item)
    return frozenset(names)


def allowed_syscalls(filters: list[str]) -> set[str]:
    """The allow list systemd builds from SystemCallFilter= lines (first one must allow)."""
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names = set().union(*(expand(n) for n in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def apply(unit: Path) -> None:
    """Restrict this process as `unit` would be restricted."""
    settings = service_settings(unit)
    libc = ctypes.CDLL(None, use_errno=True)
    keep = {CAPABILITY_NUMBERS[c] for c in settings.get("CapabilityBoundingSet", [""])[0].split()}
    last = int(Path(CAP_LAST_CAP_FILE).read_text())
    for cap in range(last + 1):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"cannot drop capability {cap}")
    if settings.get("NoNewPrivileges") == ["yes"] and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    if settings.get("MemoryDenyWriteExecute") == ["yes"] and libc.prctl(PR_SET_MDWE, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
    filters = settings.get("SystemCallFilter", [])
    if filters:
        error = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[0])
        _load_seccomp(allowed_syscalls(filters), error)


def _load_seccomp(allowed: set[str], error: int) -> None:
    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = seccomp.seccomp_init(0x00050000 | error)  # SCMP_ACT_ERRNO(error) for everything else
    for name in sorted(allowed):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # names of other architectures do not resolve here
            rc = seccomp.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0)
            if rc != 0:
                raise OSError(-rc, f"seccomp_rule_add {name}")
    rc = seccomp.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load")


def main() -> None:
    """Apply the unit's restrictions, then exec the command after `--`."""
    argv = sys.argv[1:]
    split = argv.index("--")
    apply(Path(argv[0]))
    command = argv[split + 1:]
    os.execv(command[0], command)  # noqa: S606 (argv from the test, no shell wanted)


if __name__ == "__main__":
    if not re.match(r".+\.service$", sys.argv[1] if len(sys.argv) > 1 else ""):
        sys.exit("usage: python -m tests.deploy.sandbox UNIT.service -- COMMAND...")
    main()
