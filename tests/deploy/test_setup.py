"""`exfilguard setup` against a staging root: real venv, real pip install, real units verified."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
from pathlib import Path

import pytest

from admin import setup as setup_cmd
from collector import config as collector_config
from collector import install
from common import agentconfig as agent_config
from tests.deploy import units

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not units.have_systemd_analyze(), reason="systemd-analyze missing (bootstrap)"),
]


def setup(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="exfilguard")
    setup_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["setup", *argv])
    result: int = args.run(args)
    return result


def passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"{user} not in {root}/etc/passwd")


def test_install_update_and_uninstall_both_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    common = ["--root", str(root), "--source", str(units.REPO)]
    venv = root / "opt/exfilguard/venv"
    state = root / "var/lib/exfilguard"

    # Agent first (the awkward order): venv with the package, root-only config and state.
    assert setup("agent", *common) == 0, capsys.readouterr().err
    imports = "import agent.main, collector.tls.pki, protos.exfilguard_pb2"
    subprocess.run([str(venv / "bin/python"), "-c", imports], check=True)
    agent_file = root / "etc/exfilguard/agent.yaml"
    assert agent_config.load(agent_file).state_dir == "/var/lib/exfilguard/agent"
    assert stat.S_IMODE(agent_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "agent").stat().st_mode) == 0o700
    (state / "agent" / "agent.key").write_text("the agent's secret")

    # A first try of the collector by hand as root left root-owned state behind.
    (state / "evidence").mkdir(mode=0o700)
    (state / "evidence" / "signing.key").write_text("root's first run")
    (state / "collector.db").write_text("events")
    # Collector: user, its state directory handed over without touching the agent's inside.
    assert setup("collector", *common) == 0, capsys.readouterr().err
    assert (venv / "bin/exfilguard-collector").exists()
    config_file = root / "etc/exfilguard/collector.yaml"
    config = collector_config.load(config_file)
    assert config.store == "/var/lib/exfilguard/collector.db" and config.state_dir == "/var/lib/exfilguard"
    uid, gid = passwd_ids(root, "exfilguard")
    for directory in (state, state / "pki", root / "var/log/exfilguard"):
        info = directory.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o750), directory
    # systemd's StateDirectory= chown stops at a top level that is already the user's.
    assert (state / "agent").stat().st_uid == 0 and (state / "agent/agent.key").stat().st_uid == 0
    for left in ("evidence", "evidence/signing.key", "collector.db"):  # adopted, or the service fails
        assert ((state / left).stat().st_uid, (state / left).stat().st_gid) == (uid, gid), left
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o640
    assert any((root / "etc/exfilguard/policies").iterdir())

    # Idempotent: the admin's config survives; our unit and the venv are left alone when unchanged.
    config_file.write_text(config_file.read_text() + "# the admin was here\n")
    capsys.readouterr()
    assert setup("collector", *common) == 0
    out = capsys.readouterr().out
    assert f"kept {config_file}" in out
    assert f"unchanged {root}/etc/systemd/system/exfilguard-collector.service" in out
    assert f"unchanged {venv} (same source)" in out
    assert "the admin was here" in config_file.read_text()

    # The installed units verify against the installed venv (no stub executables).
    units.prepare_root(root)
    done = units.verify(root, "exfilguard-agent.service", "exfilguard-collector.service")
    assert done.returncode == 0 and done.stderr == "", done.stderr

    # Purge the collector: its files go, the agent's venv, config and state stay.
    assert setup("collector", *common, "--uninstall", "--purge") == 0
    assert not (root / "etc/systemd/system/exfilguard-collector.service").exists()
    assert not config_file.exists() and not (state / "collector.db").exists()
    assert (venv / "bin/exfilguard-agent").exists() and agent_file.exists()
    assert (state / "agent/agent.key").read_text() == "the agent's secret"

    # Uninstall the agent without purge: venv goes, config and state stay.
    assert setup("agent", *common, "--uninstall") == 0
    assert not venv.exists()
    assert agent_file.exists() and (state / "agent").exists()


def test_setup_refuses_a_foreign_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert setup("agent", "--root", str(tmp_path), "--source", str(tmp_path)) == 1
    assert "not an ExfilGuard source tree" in capsys.readouterr().err


def test_purge_needs_uninstall(tmp_path: Path) -> None:
    assert setup("agent", "--root", str(tmp_path), "--purge") == 2


def test_state_left_by_root_is_adopted_and_foreign_or_linked_state_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("handing files to another user needs root")
    top = tmp_path / "var/lib/exfilguard"
    (top / "agent").mkdir(parents=True)
    (top / "agent/agent.key").write_text("the agent's")
    (top / "evidence").mkdir()
    (top / "evidence/signing.key").write_text("k")
    outside = tmp_path / "shadow"
    outside.write_text("not the collector's")
    (top / "link").symlink_to(outside)
    user = (54321, 54321)
    assert install.adopt_state(top, user, keep={"agent"}) == 3  # evidence, its key, the link itself
    owners = {p: (top / p).lstat().st_uid for p in ("evidence", "evidence/signing.key", "link")}
    assert owners == dict.fromkeys(owners, 54321)
    assert outside.stat().st_uid == 0, "a symlink is never followed"
    assert (top / "agent").stat().st_uid == 0 and (top / "agent/agent.key").stat().st_uid == 0
    assert install.adopt_state(top, user, keep={"agent"}) == 0  # idempotent

    foreign = top / "evidence/other"
    foreign.write_text("someone else's")
    os.chown(foreign, 4242, 4242)
    with pytest.raises(install.InstallError) as refused:
        install.adopt_state(top, user)
    assert refused.value.step == "state" and str(foreign) in str(refused.value)
    foreign.unlink()
    os.link(outside, top / "evidence/hardlink")
    with pytest.raises(install.InstallError) as linked:
        install.adopt_state(top, user)
    assert linked.value.step == "state" and str(top / "evidence/hardlink") in str(linked.value)
    assert outside.stat().st_uid == 0
