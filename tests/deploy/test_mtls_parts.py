"""The mTLS building blocks on their own: server credentials, the CRL reader, agent credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import enroll as agent_enroll
from collector.tls import mtls, pki
from protos import exfilguard_pb2 as pb
from protos import exfilguard_pb2_grpc as pb_grpc
from tests.deploy.aioserver import LoopThread


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    authority = pki.CertificateAuthority(tmp_path / "pki")
    authority.init_ca()
    authority.issue_server("localhost", ["127.0.0.1"])
    return authority


def test_server_credentials_name_the_bad_key(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    cert, key, client_ca = str(ca.server_cert_path), str(ca.server_key_path), str(ca.ca_cert_path)
    mtls.server_credentials(cert, key, client_ca)
    with pytest.raises(mtls.MtlsError) as info:
        mtls.server_credentials(cert, str(tmp_path / "missing.key"), client_ca)
    assert info.value.key == "key"
    other = ca.issue_agent("a1")
    with pytest.raises(mtls.MtlsError, match="is not the key of") as info:
        mtls.server_credentials(cert, str(other.key_path), client_ca)
    assert info.value.key == "key"
    with pytest.raises(mtls.MtlsError) as info:
        mtls.server_credentials(cert, key, key)  # a key where the CA should be
    assert info.value.key == "client_ca"


def test_revocation_list_follows_the_file(ca: pki.CertificateAuthority) -> None:
    one = ca.issue_agent("a1").cert
    revocations = mtls.RevocationList(ca.crl_path, ca.ca_cert_path)
    assert not revocations.is_revoked(one.serial_number)
    ca.revoke_agent("a1")
    os.utime(ca.crl_path, ns=(1, 1))  # a different stamp even within the file system's clock tick
    revocations._checked = 0.0  # skip the once-a-second throttle instead of sleeping past it
    assert revocations.is_revoked(one.serial_number)


def test_a_forged_crl_is_ignored_after_start_and_fatal_at_start(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    one = ca.issue_agent("a1").cert
    ca.revoke_agent("a1")
    revocations = mtls.RevocationList(ca.crl_path, ca.ca_cert_path)
    assert revocations.is_revoked(one.serial_number)
    rogue = pki.CertificateAuthority(tmp_path / "rogue")
    rogue.init_ca()  # an empty CRL, signed by someone else
    ca.crl_path.write_bytes(rogue.crl_path.read_bytes())
    revocations._checked = 0.0
    assert revocations.is_revoked(one.serial_number)  # the last good list stays
    with pytest.raises(mtls.MtlsError) as info:
        mtls.RevocationList(ca.crl_path, ca.ca_cert_path)
    assert info.value.key == "crl"


def test_agent_credentials_refuse_a_certificate_for_another_id(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    issued = ca.issue_agent("a1")
    common = {"ca": str(ca.ca_cert_path), "state_dir": tmp_path, "cert": str(issued.cert_path),
              "key": str(issued.key_path)}
    agent_enroll.client_credentials(agent_id="a1", **common)  # type: ignore[arg-type]
    with pytest.raises(agent_enroll.CredentialsError, match="is for agent 'a1'") as info:
        agent_enroll.client_credentials(agent_id="a2", **common)  # type: ignore[arg-type]
    assert info.value.key == "cert"


def test_agent_credentials_without_cert_or_token_say_what_to_set(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    with pytest.raises(agent_enroll.CredentialsError, match="enrollment_token") as info:
        agent_enroll.client_credentials(
            ca=str(ca.ca_cert_path), cert=None, key=None, state_dir=tmp_path, agent_id="a1"
        )
    assert info.value.key == "cert"


def test_enroll_address_defaults_to_the_collector_host() -> None:
    assert agent_enroll.enroll_address("collector.example:50051", None) == "collector.example:50052"
    assert agent_enroll.enroll_address("[::1]:50051", None) == "[::1]:50052"
    assert agent_enroll.enroll_address("c:1", "e:2") == "e:2"


def test_agent_credentials_say_when_the_certificate_expired(
    ca: pki.CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    issued = ca.issue_agent("a1", not_before=now - 10 * day, not_after=now - day)
    agent_enroll.client_credentials(ca=str(ca.ca_cert_path), cert=str(issued.cert_path),
                                    key=str(issued.key_path), state_dir=tmp_path, agent_id="a1")
    assert any(r.levelname == "ERROR" and "expired" in r.getMessage() for r in caplog.records)


class EchoIngest(pb_grpc.IngestServicer):
    """An iterator-style ingest stand-in: one ack per message (the real one uses context.read())."""

    async def Stream(self, request_iterator: Any, context: Any) -> Any:
        count = 0
        async for _message in request_iterator:
            count += 1
            yield pb.CollectorMessage(ack=pb.Ack(sequence=count))


def test_interceptor_checks_iterator_style_servicers_too(ca: pki.CertificateAuthority) -> None:
    loop = LoopThread()
    server: list[grpc.aio.Server] = []

    async def start() -> int:
        aio = grpc.aio.server(interceptors=[mtls.AgentAuthInterceptor()])
        pb_grpc.add_IngestServicer_to_server(EchoIngest(), aio)
        port = aio.add_secure_port("127.0.0.1:0", mtls.server_credentials(
            str(ca.server_cert_path), str(ca.server_key_path), str(ca.ca_cert_path)))
        await aio.start()
        server.append(aio)
        return port

    port = loop.call(start)
    try:
        issued = ca.issue_agent("a1")
        assert issued.key_path is not None and issued.cert_path is not None
        credentials = grpc.ssl_channel_credentials(
            ca.ca_cert_path.read_bytes(), issued.key_path.read_bytes(), issued.cert_path.read_bytes())
        for claimed, expected in (("a1", None), ("a2", grpc.StatusCode.PERMISSION_DENIED)):
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                hello = pb.AgentMessage(hello=pb.Hello(agent_id=claimed))
                replies = pb_grpc.IngestStub(channel).Stream(iter([hello]), timeout=10)
                if expected is None:
                    assert [r.ack.sequence for r in replies] == [1]
                else:
                    with pytest.raises(grpc.RpcError) as info:
                        list(replies)
                    assert info.value.code() == expected
    finally:
        loop.call(lambda: server[0].stop(None))
        loop.close()
