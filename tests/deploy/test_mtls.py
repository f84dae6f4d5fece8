"""mTLS between agents and the real collector: handshake, rejections with clear statuses, enrollment.

The collector runs in-process (its own event loop thread) on loopback with certificates made by
`collector.tls.pki`, exactly as `exfilguard certs` makes them; clients are real gRPC channels.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from collector import config as collector_config
from collector.server import Collector
from collector.store import open_store
from collector.store.sqlite import SqliteStore
from collector.tls import pki
from protos import exfilguard_pb2 as pb
from tests.deploy.aioserver import LoopThread
from tests.helpers import AgentStream, free_port, make_events, wait_for, write_collector_config

HANDSHAKE_REFUSED = grpc.StatusCode.UNAVAILABLE  # what gRPC reports when TLS refuses the peer


class Site:
    """A CA with agent certificates, and a collector demanding them (plus its enrollment port)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = pki.CertificateAuthority(root / "pki")
        self.ca.init_ca()
        self.ca.issue_server("localhost", ["127.0.0.1"])
        self.enroll_address = f"127.0.0.1:{free_port()}"
        path = write_collector_config(
            root / "collector",
            tls={
                "cert": str(self.ca.server_cert_path),
                "key": str(self.ca.server_key_path),
                "client_ca": str(self.ca.ca_cert_path),
                "crl": str(self.ca.crl_path),
            },
            enrollment={"listen": self.enroll_address, "pki_dir": str(self.ca.directory)},
        )
        self.config = collector_config.load(path)
        self.address = self.config.listen
        self.store = SqliteStore(self.config.store)
        self.collector = Collector(self.config, self.store)
        self.loop = LoopThread()
        self.started = False

    def start(self) -> Site:
        self.loop.call(self.collector.start)
        self.started = True
        return self

    def credentials(self, issued: pki.Issued | None) -> grpc.ChannelCredentials:
        """The client trusts the real collector; it presents `issued` (or no certificate)."""
        root = self.ca.ca_cert_path.read_bytes()
        if issued is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        assert issued.key_path is not None and issued.cert_path is not None
        return grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=issued.key_path.read_bytes(),
            certificate_chain=issued.cert_path.read_bytes(),
        )

    def stream(self, agent_id: str, issued: pki.Issued | None) -> AgentStream:
        return AgentStream(self.address, agent_id, credentials=self.credentials(issued))

    def close(self) -> None:
        if self.started:
            self.loop.call(self.collector.stop)
        self.loop.close()
        self.store.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    running = Site(tmp_path).start()
    yield running
    running.close()


def test_full_mtls_handshake_and_ingest(site: Site) -> None:
    issued = site.ca.issue_agent("agent-1")
    with site.stream("agent-1", issued) as stream:
        assert stream.ack() == 0
        stream.send_events(make_events("agent-1", 1, 3))
        assert stream.ack() == 3


def test_certificate_from_another_ca_is_refused(site: Site, tmp_path: Path) -> None:
    rogue = pki.CertificateAuthority(tmp_path / "rogue")
    rogue.init_ca()
    with site.stream("agent-1", rogue.issue_agent("agent-1")) as stream:
        code, _ = stream.status()
    assert code == HANDSHAKE_REFUSED


def test_expired_certificate_is_refused(site: Site) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = site.ca.issue_agent(
        "agent-1", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    with site.stream("agent-1", expired) as stream:
        code, _ = stream.status()
    assert code == HANDSHAKE_REFUSED


def test_no_client_certificate_is_refused(site: Site) -> None:
    with site.stream("agent-1", None) as stream:
        code, _ = stream.status()
    assert code == HANDSHAKE_REFUSED


def test_plaintext_to_the_tls_port_is_refused(site: Site) -> None:
    with AgentStream(site.address, "agent-1") as stream:
        code, _ = stream.status()
    assert code == HANDSHAKE_REFUSED


def test_revoked_certificate_is_refused(site: Site) -> None:
    issued = site.ca.issue_agent("agent-1")
    site.ca.revoke_agent("agent-1")
    with site.stream("agent-1", issued) as stream:
        code, details = stream.status()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in details


def test_revoking_cuts_a_live_stream(site: Site) -> None:
    issued = site.ca.issue_agent("agent-1")
    with site.stream("agent-1", issued) as stream:
        assert stream.ack() == 0
        site.ca.revoke_agent("agent-1")

        def cut() -> tuple[grpc.StatusCode, str] | None:
            stream.heartbeat()
            try:
                message = stream.receive(timeout=0.3)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            except queue.Empty:  # nothing yet
                return None
            assert message is not None
            return None

        ended = wait_for(cut, timeout=15, what="the revoked stream to be cut")
        assert ended is not None
        code, details = ended
    assert code == grpc.StatusCode.PERMISSION_DENIED and "revoked" in details


def test_an_agent_cannot_claim_another_agents_id(site: Site) -> None:
    issued = site.ca.issue_agent("agent-1")
    with site.stream("agent-2", issued) as stream:
        code, details = stream.status()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "agent-2" in details and "agent-1" in details


def test_events_of_another_agent_are_refused_after_a_valid_hello(site: Site) -> None:
    issued = site.ca.issue_agent("agent-1")
    with site.stream("agent-1", issued) as stream:
        assert stream.ack() == 0
        stream.send_events(make_events("agent-2", 1, 1))
        code, _ = stream.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_malformed_bytes_and_bad_events_are_invalid_argument_behind_mtls_too(site: Site) -> None:
    """The client-certificate interceptor wraps the stream with the ingest's own request parser."""
    issued = site.ca.issue_agent("agent-1")
    hello = pb.AgentMessage(hello=pb.Hello(agent_id="agent-1")).SerializeToString()
    with grpc.secure_channel(site.address, site.credentials(issued)) as channel:
        method = "/exfilguard.v1.Ingest/Stream"  # no (de)serializers: bytes in, bytes out
        raw: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        with pytest.raises(grpc.RpcError) as ended:
            list(raw(iter([hello, b"\x12\x05\xff\xff\xff"]), timeout=10))
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed AgentMessage" in (ended.value.details() or "")
    batch = make_events("agent-1", 1, 2)
    batch[1].timestamp.nanos = -1
    with site.stream("agent-1", issued) as stream:
        assert stream.ack() == 0
        stream.send_events(batch)
        code, details = stream.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "event sequence 2" in details and "nanos -1" in details
    assert site.store.count_events("agent-1") == 0


def test_the_collectors_own_certificate_is_no_agent(site: Site) -> None:
    ca = site.ca
    server = pki.Issued(pki.load_cert(ca.server_cert_path), ca.server_cert_path, ca.server_key_path)
    with site.stream("localhost", server) as stream:
        code, _ = stream.status()
    # serverAuth-only: TLS may refuse it as a client certificate; if not, it names no agent.
    assert code in {HANDSHAKE_REFUSED, grpc.StatusCode.UNAUTHENTICATED}


def test_real_agent_enrolls_with_a_token_and_delivers(site: Site, tmp_path: Path) -> None:
    """The exfilguard-agent process: CA + one-time token in agent.yaml -> certificate -> events."""
    run_enrolling_agent(site, tmp_path)


def test_agent_started_before_the_collector_enrolls_when_it_comes_up(tmp_path: Path) -> None:
    """No collector yet: the agent starts anyway (spooling) and enrolls on a later connect."""
    site = Site(tmp_path)
    try:
        run_enrolling_agent(site, tmp_path / "agent", start_collector_after=True)
    finally:
        site.close()


def run_enrolling_agent(site: Site, tmp_path: Path, start_collector_after: bool = False) -> None:
    """Start a real agent with a fresh token, wait for its events in the store, stop it."""
    tmp_path.mkdir(exist_ok=True)
    token = site.ca.create_token(600)
    state = tmp_path / "agent-state"
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text(yaml.safe_dump({
        "collector": site.address,
        "tls": {"ca": str(site.ca.ca_cert_path), "enrollment_token": token,
                "enroll_address": site.enroll_address},
        "state_dir": str(state),
        "heartbeat_seconds": 1,
        "reconnect_max_seconds": 1,
    }))
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--config", str(agent_yaml), "--emit-test-events", "3"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
        )
        try:
            id_file = state / "agent-id"
            agent_id = str(wait_for(lambda: id_file.exists() and id_file.read_text().strip(),
                                    timeout=30, what="the agent id"))
            if start_collector_after:
                wait_for(lambda: b"cannot enroll yet" in log_path.read_bytes(), timeout=60,
                         what="the agent to start without its certificate")
                assert agent.poll() is None
                site.start()
            reader = open_store(site.config.store, readonly=True)
            try:
                wait_for(lambda: reader.watermark(agent_id) >= 4, timeout=60,
                         what="agent.start and 3 test events stored")
            finally:
                reader.close()
        finally:
            agent.terminate()
            agent.wait(30)
    assert (state / "agent.crt").exists()
    assert pki.agent_id_of(pki.load_cert(state / "agent.crt")) == agent_id
    # The token is spent: a second agent with it is refused.
    with pytest.raises(pki.TokenError):
        site.ca.sign_enrollment(token, pki.make_csr("another", pki.new_key()))
