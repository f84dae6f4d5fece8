"""Enrollment over a real grpc.aio server on loopback with server TLS from `exfilguard certs`."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent import enroll as agent_enroll
from collector.fleet.enrollment import EnrollmentServer
from collector.tls import pki
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from tests.deploy.aioserver import LoopThread


class Site:
    """A CA, the collector's certificate, and a running enrollment port."""

    def __init__(self, root: Path) -> None:
        self.ca = pki.CertificateAuthority(root / "pki")
        self.ca.init_ca()
        self.ca.issue_server("localhost", ["127.0.0.1"])
        self.loop = LoopThread()
        self.server = EnrollmentServer(
            "127.0.0.1:0", self.ca,
            self.ca.server_cert_path.read_bytes(), self.ca.server_key_path.read_bytes(),
        )
        port = self.loop.call(self.server.start)
        self.address = f"127.0.0.1:{port}"

    def close(self) -> None:
        self.loop.call(self.server.stop)
        self.loop.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    running = Site(tmp_path)
    yield running
    running.close()


def test_agent_enrolls_with_a_token(site: Site, tmp_path: Path) -> None:
    token = site.ca.create_token(600)
    out = tmp_path / "agent-state"
    enrolled = agent_enroll.enroll(site.address, site.ca.ca_cert_path, token, "agent-1", out)
    assert stat.S_IMODE(enrolled.key_path.stat().st_mode) == 0o600
    cert = pki.load_cert(enrolled.cert_path)
    cert.verify_directly_issued_by(site.ca.ca()[0])
    assert pki.agent_id_of(cert) == "agent-1"
    assert [r["agent_id"] for r in site.ca.issued()] == ["agent-1"]


def test_a_used_token_is_refused(site: Site, tmp_path: Path) -> None:
    token = site.ca.create_token(600)
    agent_enroll.enroll(site.address, site.ca.ca_cert_path, token, "agent-1", tmp_path / "a1")
    with pytest.raises(agent_enroll.EnrollRefused) as info:
        agent_enroll.enroll(site.address, site.ca.ca_cert_path, token, "agent-2", tmp_path / "a2")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "(used)" in info.value.details
    assert not (tmp_path / "a2" / agent_enroll.CERT_FILE).exists()


def test_a_bad_token_is_refused(site: Site, tmp_path: Path) -> None:
    site.ca.create_token(600)
    with pytest.raises(agent_enroll.EnrollRefused) as info:
        agent_enroll.enroll(site.address, site.ca.ca_cert_path, "egt_guessed", "agent-1", tmp_path / "a")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "(unknown)" in info.value.details


def test_a_token_cannot_take_an_enrolled_agents_id(site: Site, tmp_path: Path) -> None:
    ca_file = site.ca.ca_cert_path
    agent_enroll.enroll(site.address, ca_file, site.ca.create_token(600), "agent-1", tmp_path / "a")
    with pytest.raises(agent_enroll.EnrollRefused) as info:
        agent_enroll.enroll(site.address, ca_file, site.ca.create_token(600), "agent-1", tmp_path / "b")
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_a_collector_outside_our_ca_gets_no_token(site: Site, tmp_path: Path) -> None:
    """The agent checks the enrollment port's certificate before sending its token."""
    other = pki.CertificateAuthority(tmp_path / "other")
    other.init_ca()
    token = site.ca.create_token(600)
    with pytest.raises(agent_enroll.EnrollUnreachable):
        agent_enroll.enroll(site.address, other.ca_cert_path, token, "agent-1", tmp_path / "a", timeout=5)
    # The token never reached the collector, so it still works.
    agent_enroll.enroll(site.address, site.ca.ca_cert_path, token, "agent-1", tmp_path / "a")


def test_malformed_requests_get_invalid_argument(site: Site) -> None:
    credentials = grpc.ssl_channel_credentials(site.ca.ca_cert_path.read_bytes())
    with grpc.secure_channel(site.address, credentials) as channel:
        stub = pb_grpc.EnrollmentStub(channel)
        for request in (
            pb.EnrollRequest(token="", csr_pem=b"x"),
            pb.EnrollRequest(token=site.ca.create_token(600), csr_pem=b"not a csr"),
            pb.EnrollRequest(token="t" * 300, csr_pem=b"x"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.Enroll(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:  # far beyond any CSR: refused before parsing
            stub.Enroll(pb.EnrollRequest(token="egt_x", csr_pem=b"x" * (1 << 20)), timeout=10)  # noqa: S106
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_missing_ca_file_is_a_file_error(site: Site, tmp_path: Path) -> None:
    with pytest.raises(agent_enroll.EnrollFileError) as info:
        agent_enroll.enroll(site.address, tmp_path / "nope.crt", "t", "agent-1", tmp_path / "a")
    assert info.value.path == str(tmp_path / "nope.crt")


def test_enrollment_port_from_config_needs_a_ca(tmp_path: Path) -> None:
    from collector import config as collector_config
    from collector.fleet.enrollment import EnrollmentServeError, from_config
    from tests.helpers import write_collector_config

    ca = pki.CertificateAuthority(tmp_path / "pki")
    ca.init_ca()
    server = ca.issue_server("localhost", ["127.0.0.1"])
    tls = {"cert": str(server.cert_path), "key": str(server.key_path), "client_ca": str(ca.ca_cert_path)}
    good = collector_config.load(write_collector_config(
        tmp_path / "good", tls=tls, enrollment={"listen": "127.0.0.1:0", "pki_dir": str(ca.directory)}))
    assert from_config(good) is not None
    bad = collector_config.load(write_collector_config(
        tmp_path / "bad", tls=tls, enrollment={"listen": "127.0.0.1:0", "pki_dir": str(tmp_path / "none")}))
    with pytest.raises(EnrollmentServeError, match="init-ca"):
        from_config(bad)
    assert from_config(collector_config.load(write_collector_config(tmp_path / "off"))) is None
