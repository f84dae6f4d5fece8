"""`exfilguard certs` and the CA behind it: real keys, real files, real signatures."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from admin import certs as certs_cmd
from collector.tls import pki


def run_cli(*argv: str) -> int:
    """Run `exfilguard certs ...` through the command's own registration (the real parser code)."""
    parser = argparse.ArgumentParser(prog="exfilguard")
    certs_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    result: int = args.run(args)
    return result


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    authority = pki.CertificateAuthority(tmp_path / "pki")
    authority.init_ca()
    return authority


def mode(path: Path | None) -> int:
    assert path is not None
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_builds_a_ca_server_and_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert run_cli("certs", "init-ca", "--dir", d) == 0
    assert run_cli("certs", "server", "--dir", d, "--name", "collector.example", "--san", "127.0.0.1") == 0
    assert run_cli("certs", "agent", "--dir", d, "--agent-id", "agent-1") == 0
    root = Path(d)
    for key in ("ca.key", "collector.key", "agents/agent-1.key"):
        assert mode(root / key) == 0o600, key
    ca_cert = pki.load_cert(root / "ca.crt")
    server = pki.load_cert(root / "collector.crt")
    agent = pki.load_cert(root / "agents" / "agent-1.crt")
    server.verify_directly_issued_by(ca_cert)
    agent.verify_directly_issued_by(ca_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["collector.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert pki.agent_id_of(agent) == "agent-1"
    assert pki.agent_id_of(server) is None  # a server certificate carries no agent id


def test_second_init_ca_refuses_and_keeps_the_ca(ca: pki.CertificateAuthority) -> None:
    before = ca.ca_key_path.read_bytes()
    with pytest.raises(pki.PkiFileError) as info:
        ca.init_ca()
    assert info.value.path == str(ca.ca_cert_path)
    assert ca.ca_key_path.read_bytes() == before


def test_cli_reports_missing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("certs", "agent", "--dir", str(tmp_path), "--agent-id", "a") == 2
    assert "ca.crt" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../etc", "", "a/b", "x" * 200, "-lead"])
def test_unsafe_agent_ids_are_refused(ca: pki.CertificateAuthority, bad: str) -> None:
    with pytest.raises(pki.AgentIdError) as info:
        ca.issue_agent(bad)
    assert info.value.agent_id == bad


def test_revoke_writes_a_signed_crl_with_every_cert_of_the_agent(
    ca: pki.CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    first = ca.issue_agent("agent-1").cert
    second = ca.issue_agent("agent-1").cert
    other = ca.issue_agent("agent-2").cert
    assert run_cli("certs", "revoke", "--dir", str(ca.directory), "--agent-id", "agent-1") == 0
    crl = pki.load_crl(ca.crl_path, ca.ca()[0])
    revoked = {r.serial_number for r in crl}
    assert revoked == {first.serial_number, second.serial_number}
    assert other.serial_number not in revoked
    assert run_cli("certs", "list", "--dir", str(ca.directory), "--json") == 0
    states = {json.loads(line)["serial"]: json.loads(line)["state"]
              for line in capsys.readouterr().out.splitlines() if line.startswith("{")}
    assert states[format(other.serial_number, "x")] == "valid"
    assert states[format(first.serial_number, "x")] == "revoked"


def test_revoking_an_unknown_agent_is_an_error(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(pki.AgentIdError):
        ca.revoke_agent("never-issued")


def test_a_crl_signed_by_another_ca_is_rejected(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    rogue = pki.CertificateAuthority(tmp_path / "rogue")
    rogue.init_ca()
    with pytest.raises(pki.PkiFileError, match="not signed by the CA"):
        pki.load_crl(rogue.crl_path, ca.ca()[0])


def test_token_is_stored_only_as_a_hash_and_works_once(
    ca: pki.CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("certs", "token", "--dir", str(ca.directory), "--ttl", "1h") == 0
    token = capsys.readouterr().out.strip()
    stored = ca.tokens_path.read_text()
    assert token not in stored
    assert mode(ca.tokens_path) == 0o600
    key = pki.new_key()
    cert = ca.sign_enrollment(token, pki.make_csr("agent-9", key))
    assert pki.agent_id_of(cert) == "agent-9"
    assert cert.public_key() == key.public_key()
    with pytest.raises(pki.TokenError) as info:
        ca.sign_enrollment(token, pki.make_csr("agent-9", key))
    assert info.value.reason == "used"


def test_unknown_expired_and_bound_tokens_are_refused(ca: pki.CertificateAuthority) -> None:
    csr = pki.make_csr("agent-1", pki.new_key())
    with pytest.raises(pki.TokenError) as info:
        ca.sign_enrollment("egt_not-a-token", csr)
    assert info.value.reason == "unknown"

    expired = ca.create_token(3600)
    tokens = json.loads(ca.tokens_path.read_text())
    for entry in tokens.values():  # as if an hour had passed
        entry["expires"] = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    ca.tokens_path.write_text(json.dumps(tokens))
    with pytest.raises(pki.TokenError) as info:
        ca.sign_enrollment(expired, csr)
    assert info.value.reason == "expired"

    bound = ca.create_token(3600, agent_id="agent-2")
    with pytest.raises(pki.TokenError) as info:
        ca.sign_enrollment(bound, csr)
    assert info.value.reason == "bound"


def test_an_unbound_token_cannot_take_over_an_enrolled_agent_id(ca: pki.CertificateAuthority) -> None:
    ca.issue_agent("agent-1")
    with pytest.raises(pki.EnrolledError) as info:
        ca.sign_enrollment(ca.create_token(), pki.make_csr("agent-1", pki.new_key()))
    assert info.value.agent_id == "agent-1"
    # The admin's explicit re-enrollment (a token bound to that id) is allowed.
    cert = ca.sign_enrollment(ca.create_token(agent_id="agent-1"), pki.make_csr("agent-1", pki.new_key()))
    assert pki.agent_id_of(cert) == "agent-1"


def test_malformed_and_forged_requests_are_refused(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(pki.CsrError):
        ca.sign_enrollment(ca.create_token(), b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n")
    with pytest.raises(pki.CsrError):
        ca.sign_enrollment(ca.create_token(), b"x" * (pki.MAX_CSR_BYTES + 1))
    # A request whose CN names two ids (or none) cannot pick an identity.
    key = pki.new_key()
    cn = NameOID.COMMON_NAME
    two = x509.Name([x509.NameAttribute(cn, "a"), x509.NameAttribute(cn, "b")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(two).sign(key, hashes.SHA256())
    with pytest.raises(pki.CsrError):
        ca.sign_enrollment(ca.create_token(), csr.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("ttl", ["0", "31d", "soon", "-5"])
def test_bad_ttl_is_an_argument_error(ca: pki.CertificateAuthority, ttl: str) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli("certs", "token", "--dir", str(ca.directory), "--ttl", ttl)
    assert info.value.code == 2


@pytest.mark.root
def test_files_written_by_root_belong_to_the_directory_owner(tmp_path: Path) -> None:
    """`exfilguard certs` run as root in the collector's PKI dir: the collector user can read the keys."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    directory = tmp_path / "pki"
    directory.mkdir()
    os.chown(directory, 65534, 65534)
    authority = pki.CertificateAuthority(directory)
    authority.init_ca()
    authority.create_token()
    for name in ("ca.key", "ca.crt", "crl.pem", "tokens.json"):
        info = (directory / name).stat()
        assert (info.st_uid, info.st_gid) == (65534, 65534), name
