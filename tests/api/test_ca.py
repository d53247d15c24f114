"""Our CA: what it writes, what its certificates carry, revocation seen without a restart, tokens, the CLI."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from photonstream.api.auth.ca import CertificateAuthority, load_certificate, parse_serial
from photonstream.api.auth.certificates import CertificateVerifier, claims_of
from photonstream.api.auth.tokens import OwnIssuerKeys, TokenVerifier, issue_token
from photonstream.api.cli import ca_app
from photonstream.api.errors import AuthenticationError
from photonstream.errors import ConfigError
from tests.api.pki import expired_client_certificate

ISSUER, AUDIENCE = "photonstream-test", "photonstream-api"


@pytest.fixture()
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", common_name="test CA")


def test_init_writes_private_keys_unreadable_to_others_and_refuses_to_overwrite(ca: CertificateAuthority) -> None:
    for name in ("ca.key", "token.key"):
        assert stat.S_IMODE((ca.directory / name).stat().st_mode) == 0o600
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    assert (ca.directory / "crl.pem").is_file() and (ca.directory / "token.jwks.json").is_file()
    with pytest.raises(ConfigError, match="already holds a CA"):
        CertificateAuthority.init(ca.directory)


def test_user_certificate_carries_identity_experiments_and_groups(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue_user("alice", ["xpp00001", "mfx00002", "xpp00001"], ["sfx-team"], days=3, out_dir=tmp_path)
    cert = load_certificate(issued.certificate)
    cert.verify_directly_issued_by(ca.certificate)
    claims = claims_of(cert)
    assert (claims.identity, claims.experiments, claims.groups) == ("alice", ("mfx00002", "xpp00001"), ("sfx-team",))
    assert claims.serial == issued.serial
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert dt.timedelta(days=2) < cert.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(days=3)
    assert stat.S_IMODE(issued.private_key.stat().st_mode) == 0o600
    [record] = ca.records()
    assert (record.serial, record.kind, record.experiments) == (issued.serial, "user", ["mfx00002", "xpp00001"])


def test_bad_names_are_refused_naming_the_value(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity 'al ice'"):
        ca.issue_user("al ice", out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"experiment 'xpp/\.\./x'"):
        ca.issue_user("alice", ["xpp/../x"], out_dir=tmp_path)


def test_service_certificate_is_for_servers_on_localhost(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue_service("api", ["api.example.org", "10.0.0.5"], out_dir=tmp_path)
    cert = load_certificate(issued.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "api.example.org"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.5"}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_verifier_accepts_ours_and_refuses_foreign_expired_and_server_certificates(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    verifier = CertificateVerifier(ca.directory)
    good = load_certificate(ca.issue_user("alice", ["xpp00001"], out_dir=tmp_path).certificate)
    assert verifier.verify(good).identity == "alice"
    other = CertificateAuthority.init(tmp_path / "other", common_name="test CA")  # same name, different key
    foreign = load_certificate(other.issue_user("alice", ["xpp00001"], out_dir=tmp_path / "o").certificate)
    with pytest.raises(AuthenticationError, match="not issued by this service's CA"):
        verifier.verify(foreign)
    expired = load_certificate(expired_client_certificate(ca, "old", tmp_path / "x")[0])
    with pytest.raises(AuthenticationError, match="expired at"):
        verifier.verify(expired)
    server = load_certificate(ca.issue_service("api", out_dir=tmp_path / "s").certificate)
    with pytest.raises(AuthenticationError, match="clientAuth"):
        verifier.verify(server)


def test_revocation_reaches_a_running_verifier_through_the_crl(ca: CertificateAuthority, tmp_path: Path) -> None:
    verifier = CertificateVerifier(ca.directory)
    alice = load_certificate(ca.issue_user("alice", out_dir=tmp_path / "a").certificate)
    bob = load_certificate(ca.issue_user("bob", out_dir=tmp_path / "b").certificate)
    verifier.verify(alice)
    record = ca.revoke(claims_of(alice).serial, reason="laptop stolen")
    assert record.revoked_at and record.revocation_reason == "laptop stolen"
    with pytest.raises(AuthenticationError, match="revoked"):
        verifier.verify(alice)
    assert verifier.verify(bob).identity == "bob"
    crl = x509.load_pem_x509_crl((ca.directory / "crl.pem").read_bytes())
    assert [entry.serial_number for entry in crl] == [alice.serial_number]
    with pytest.raises(ConfigError, match="already revoked"):
        ca.revoke(claims_of(alice).serial)
    with pytest.raises(ConfigError, match="not issued by this CA"):
        ca.revoke("abc123")


def test_a_tampered_crl_refuses_every_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    verifier = CertificateVerifier(ca.directory)
    alice = load_certificate(ca.issue_user("alice", out_dir=tmp_path).certificate)
    other = CertificateAuthority.init(tmp_path / "other")
    (ca.directory / "crl.pem").write_bytes((other.directory / "crl.pem").read_bytes())
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier.verify(alice)


def test_serials_parse_in_the_forms_people_paste() -> None:
    assert parse_serial("0xAB:cd") == parse_serial("abcd") == 0xABCD
    with pytest.raises(ConfigError, match="not a hexadecimal"):
        parse_serial("xyz")


def _verifier(ca_dir: Path) -> TokenVerifier:
    return TokenVerifier(own_keys=OwnIssuerKeys(ca_dir), own_issuer=ISSUER, audience=AUDIENCE)


def test_tokens_round_trip_and_refuse_bad_signature_audience_expiry_and_issuer(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    verifier = _verifier(ca.directory)
    token = issue_token(ca, "alice", issuer=ISSUER, audience=AUDIENCE, experiments=["xpp00001"], groups=["g1"])
    claims = verifier.verify(token)
    assert (claims.identity, claims.experiments, claims.groups) == ("alice", ("xpp00001",), ("g1",))
    assert claims.token_id and claims.expires_at > dt.datetime.now(dt.UTC)

    header, _payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps({**jwt.decode(token, options={"verify_signature": False}), "sub": "mallory"}).encode()
    ).decode()
    with pytest.raises(AuthenticationError, match="signature is not valid"):
        verifier.verify(f"{header}.{forged_payload}.{signature}")
    other = CertificateAuthority.init(tmp_path / "other")
    with pytest.raises(AuthenticationError, match="signature is not valid"):
        verifier.verify(issue_token(other, "alice", issuer=ISSUER, audience=AUDIENCE))
    with pytest.raises(AuthenticationError, match="audience"):
        verifier.verify(issue_token(ca, "alice", issuer=ISSUER, audience="someone-else"))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(issue_token(ca, "alice", issuer=ISSUER, audience=AUDIENCE, lifetime_s=60, now=long_ago))
    with pytest.raises(AuthenticationError, match="not trusted"):
        verifier.verify(issue_token(ca, "alice", issuer="elsewhere", audience=AUDIENCE))
    with pytest.raises(AuthenticationError, match="well-formed"):
        verifier.verify("not-a-jwt")
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": 9999999999, "iat": 1}, None, "none")
    with pytest.raises(AuthenticationError, match=r"signature|algorithm"):
        verifier.verify(unsigned)


def test_cli_init_issue_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    ca_dir = tmp_path / "ca"
    assert runner.invoke(ca_app, ["init", str(ca_dir)]).exit_code == 0
    result = runner.invoke(
        ca_app,
        ["issue-user", "alice", "-e", "xpp00001,mfx00002", "-g", "sfx", "--out", str(tmp_path), "--ca", str(ca_dir)],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "alice.crt").is_file() and (tmp_path / "alice.key").is_file()
    listing = runner.invoke(ca_app, ["list", "--json", "--ca", str(ca_dir)])
    [record] = json.loads(listing.stdout)
    assert record["experiments"] == ["mfx00002", "xpp00001"] and record["revoked_at"] is None
    assert runner.invoke(ca_app, ["revoke", record["serial"], "--ca", str(ca_dir)]).exit_code == 0
    again = runner.invoke(ca_app, ["revoke", record["serial"], "--ca", str(ca_dir)])
    assert again.exit_code == 2 and "already revoked" in again.output
    table = runner.invoke(ca_app, ["list", "--ca", str(ca_dir)])
    assert "revoked" in table.stdout and "alice" in table.stdout
    token = runner.invoke(ca_app, ["issue-token", "alice", "--issuer", ISSUER, "--ca", str(ca_dir)]).stdout.strip()
    assert _verifier(ca_dir).verify(token).identity == "alice"
    missing = runner.invoke(ca_app, ["list", "--ca", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "ca init" in missing.output
