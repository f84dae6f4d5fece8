"""The TLS and enrollment keys of both configs: errors name the key, paths are relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import config as collector_config
from common import agentconfig as agent_config
from common.yamlfile import YamlError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_collector_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = collector_config.load(write(tmp_path, "collector.yaml", (
        "listen: 0.0.0.0:50051\n"
        "tls: {cert: pki/collector.crt, key: pki/collector.key, client_ca: pki/ca.crt, crl: pki/crl.pem}\n"
        "enrollment: {listen: 0.0.0.0:50052, pki_dir: pki}\n"
    )))
    assert config.tls.crl == str(tmp_path / "pki/crl.pem")
    assert config.tls.cert == str(tmp_path / "pki/collector.crt")
    assert config.enrollment is not None and config.enrollment.pki_dir == str(tmp_path / "pki")


def test_enrollment_needs_a_server_certificate(tmp_path: Path) -> None:
    with pytest.raises(YamlError, match=r"enrollment needs tls\.cert"):
        collector_config.load(write(tmp_path, "collector.yaml", (
            "tls: {insecure_loopback: true}\nenrollment: {listen: 127.0.0.1:50052}\n"
        )))


def test_plaintext_to_a_remote_collector_is_refused(tmp_path: Path) -> None:
    with pytest.raises(YamlError, match="loopback"):
        collector_config.load(write(tmp_path, "collector.yaml", "listen: 0.0.0.0:50051\n"
                                    "tls: {insecure_loopback: true}\n"))


def test_agent_needs_cert_and_key_together(tmp_path: Path) -> None:
    with pytest.raises(YamlError, match="both cert and key"):
        agent_config.load(write(tmp_path, "agent.yaml", "tls: {ca: ca.crt, cert: a.crt}\n"))


def test_agent_tls_paths_are_relative_and_enroll_address_is_kept(tmp_path: Path) -> None:
    config = agent_config.load(write(tmp_path, "agent.yaml", (
        "collector: collector.example:50051\n"
        "tls: {ca: ca.crt, enrollment_token: egt_x, enroll_address: collector.example:6000}\n"
    )))
    assert config.tls.ca == str(tmp_path / "ca.crt")
    assert config.tls.enroll_address == "collector.example:6000"
