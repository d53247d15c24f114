"""Missing and corrupt security files (issue 13, defect 7, and the class it came from).

Before: with ``crl.pem`` moved away a revoked certificate got 200 (a missing CRL read as an empty one). Now a CRL
that is missing, unreadable, not a CRL or not signed by our CA refuses every client certificate (fail closed), with
one log line per problem (not one per request) and ``/v1/health`` degraded with a ``crl`` check saying what is
wrong; tokens still work. A corrupt ``token.jwks.json`` refuses our tokens with 401 (it was a 500), and a missing
or corrupt ``ca.crt`` at start is one line of error from ``photonstream serve``, not a traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from photonstream.api.auth.ca import CA_CERT, CRL, TOKEN_JWKS, CertificateAuthority, load_certificate
from photonstream.api.auth.certificates import CertificateVerifier
from tests.api.harness import EXPERIMENT, ApiHarness, Pki
from tests.store.databases import DatabaseSpec

CLI = [sys.executable, "-m", "photonstream"]


@pytest.fixture()
def own(database_spec: DatabaseSpec, tmp_path: Path) -> Iterator[ApiHarness]:
    """The API on a CA of this test's own, whose files the test may break."""
    harness = ApiHarness(database_spec, Pki(tmp_path / "pki"), tmp_path / "state")
    yield harness
    harness.close()


@pytest.fixture()
def own_sqlite(tmp_path: Path) -> Iterator[ApiHarness]:
    """As ``own``, on SQLite only (for tests whose subject is not the database)."""
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, Pki(tmp_path / "pki"), tmp_path / "state")
    yield harness
    harness.close()
    spec.close()


def crl_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and CRL in r.getMessage()]


def test_a_missing_crl_refuses_every_certificate_logs_once_and_degrades_health(
    own: ApiHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = own.pki
    eve = pki.add_user("eve", [EXPERIMENT], tmp_path / "eve")
    CertificateAuthority(pki.ca.directory).revoke(pki.serial(eve))  # what 'photonstream ca revoke' does
    assert own.client(cert=eve).get("/v1/me").status_code == 401
    assert own.client().get("/v1/health").json()["checks"]["crl"] == "ok"
    crl = pki.ca.directory / CRL
    crl.rename(tmp_path / "crl.pem.moved")
    caplog.set_level(logging.WARNING, logger="photonstream.api")
    for who in (eve, "alice", eve, "alice", "bob"):
        refused = own.client(cert=who).get("/v1/me")
        assert refused.status_code == 401, (who, refused.text)
        assert "revocation list is missing" in refused.json()["detail"]
    token = own.client(token=pki.token("alice", (EXPERIMENT,))).get("/v1/me")
    assert token.status_code == 200 and token.json()["credential"] == "token"
    health = own.client().get("/v1/health").json()
    assert health["status"] == "degraded" and "missing" in health["checks"]["crl"]
    assert str(pki.ca.directory) not in health["checks"]["crl"]  # health is public: no paths
    assert len(crl_errors(caplog)) == 1, crl_errors(caplog)

    (tmp_path / "crl.pem.moved").rename(crl)
    assert own.client(cert="alice").get("/v1/me").status_code == 200
    back = own.client(cert=eve).get("/v1/me")
    assert back.status_code == 401 and "is revoked" in back.json()["detail"]
    assert own.client().get("/v1/health").json()["status"] == "ok"
    assert any("readable again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("garbage", "is not a CRL"),
        ("empty", "is not a CRL"),
        ("another CA's CRL", "does not verify"),
        ("a directory", "is unreadable"),
    ],
)
def test_a_corrupt_crl_refuses_every_certificate_with_its_reason(
    own_sqlite: ApiHarness, damage: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    harness, pki = own_sqlite, own_sqlite.pki
    crl = pki.ca.directory / CRL
    crl.unlink()
    if damage == "garbage":
        crl.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n")
    elif damage == "empty":
        crl.write_bytes(b"")
    elif damage == "another CA's CRL":
        crl.write_bytes((pki.other_ca.directory / CRL).read_bytes())
    else:
        crl.mkdir()
    caplog.set_level(logging.ERROR, logger="photonstream.api")
    for _ in range(3):
        refused = harness.client(cert="alice").get("/v1/me")
        assert refused.status_code == 401 and problem in refused.json()["detail"], refused.text
    health = harness.client().get("/v1/health").json()
    assert health["status"] == "degraded" and problem in health["checks"]["crl"]
    assert len(crl_errors(caplog)) == 1


def test_a_corrupt_token_key_file_refuses_our_tokens_with_401_not_500(
    own_sqlite: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness, pki = own_sqlite, own_sqlite.pki
    token = pki.token("alice", (EXPERIMENT,))
    assert harness.client(token=token).get("/v1/me").status_code == 200
    caplog.set_level(logging.ERROR, logger="photonstream.api")
    jwks = pki.ca.directory / TOKEN_JWKS
    for corrupt in (b"{not json", b"[]", b'{"keys": [{"kty": "nonsense"}]}', b'{"keys": [5]}', b"\xff\xfe"):
        jwks.write_bytes(corrupt)
        os.utime(jwks, ns=(len(corrupt) * 10**9, len(corrupt) * 10**9))  # a new version even if the size repeats
        for _ in range(2):
            refused = harness.client(token=token).get("/v1/me")
            assert refused.status_code == 401, (corrupt, refused.text)
            assert "token keys are unreadable" in refused.json()["detail"]
    assert harness.client(cert="alice").get("/v1/me").status_code == 200  # certificates do not depend on it
    logged = [r for r in caplog.records if TOKEN_JWKS in r.getMessage()]
    assert len(logged) == 5  # once per version of the file, not per request


def test_ca_init_writes_an_empty_crl_that_a_server_accepts(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    done = subprocess.run([*CLI, "ca", "init", str(ca_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    crl = x509.load_pem_x509_crl((ca_dir / CRL).read_bytes())
    assert len(crl) == 0 and crl.is_signature_valid(load_certificate(ca_dir / CA_CERT).public_key())  # type: ignore[arg-type]
    user = CertificateAuthority(ca_dir).issue_user("alice", [EXPERIMENT], out_dir=tmp_path / "alice")
    verifier = CertificateVerifier(ca_dir)
    assert verifier.verify(load_certificate(user.certificate)).identity == "alice"
    assert verifier.crl_problem() is None


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_serve_with_a_broken_ca_certificate_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    pki = Pki(tmp_path / "pki")
    ca_cert = pki.ca.directory / CA_CERT
    if damage == "missing":
        ca_cert.unlink()
    else:
        ca_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    command = [*CLI, "serve", "--ca", str(pki.ca.directory), "--mtls-optional", "--state-dir", str(tmp_path / "s"),
               "--cert", str(pki.service[0]), "--key", str(pki.service[1]), "--port", "0"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and CA_CERT in errors[0] and "cannot read the certificate" in errors[0], done.stderr
