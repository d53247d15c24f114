"""Only a user's certificate identifies a user (issue 13, defect 8).

Before: the CA's own certificate, presented with its key as a TLS client certificate, authenticated as the user
"photonstream CA" (it verifies as issued by the CA: it signs itself, and it names no extended key usage). Now a
user is a leaf (BasicConstraints CA:FALSE) with extendedKeyUsage clientAuth; the CA certificate, service
(serverAuth) certificates and leaves without those extensions are refused with 401 and a reason.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from photonstream.api.auth.ca import CA_CERT, CA_KEY, CertificateAuthority
from tests.adversarial.support import OWN_BUFFER_PORTS
from tests.api.harness import ApiHarness, Pki
from tests.api.servers import client_tls, running_server


def leaf(
    ca: CertificateAuthority,
    name: str,
    out_dir: Path,
    *,
    ca_flag: bool | None,
    usages: list[x509.ObjectIdentifier] | None,
) -> tuple[Path, Path]:
    """A certificate our CA signs with the given BasicConstraints (None: no extension) and extended key usages."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if ca_flag is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca.key, hashes.SHA384())
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def impostors(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Certificates our CA signed that are not users', by name in ``pki.certs``; each with the reason expected."""
    out = tmp_path_factory.mktemp("impostors")
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    pki.certs["the CA itself"] = (pki.ca.directory / CA_CERT, pki.ca.directory / CA_KEY)
    pki.certs["a service certificate"] = pki.service
    pki.certs["a leaf without BasicConstraints"] = leaf(pki.ca, "nobc", out, ca_flag=None, usages=[client])
    pki.certs["a CA:TRUE certificate for clientAuth"] = leaf(pki.ca, "subca", out, ca_flag=True, usages=[client])
    pki.certs["a leaf without extended key usage"] = leaf(pki.ca, "noeku", out, ca_flag=False, usages=None)
    pki.certs["a leaf for code signing"] = leaf(
        pki.ca, "codesign", out, ca_flag=False, usages=[ExtendedKeyUsageOID.CODE_SIGNING]
    )
    return {
        "the CA itself": "CA certificate",
        "a service certificate": "service certificate",
        "a leaf without BasicConstraints": "BasicConstraints",
        "a CA:TRUE certificate for clientAuth": "CA certificate",
        "a leaf without extended key usage": "clientAuth",
        "a leaf for code signing": "clientAuth",
    }


def test_certificates_that_are_not_users_get_401_naming_what_they_are(
    api: ApiHarness, impostors: dict[str, str]
) -> None:
    for name, reason in impostors.items():
        response = api.client(cert=name).get("/v1/me")
        assert response.status_code == 401, (name, response.text)
        assert reason in response.json()["detail"], (name, response.text)
    refusals = api.services().policy.audit_entries(action="authenticate")
    assert len(refusals) == len(impostors) and {e.outcome for e in refusals} == {"deny"}
    assert api.client(cert="alice").get("/v1/me").json()["identity"] == "alice"


def test_the_ca_certificate_and_a_service_certificate_over_tls_are_refused(
    sqlite_api: ApiHarness, impostors: dict[str, str]
) -> None:
    """Over a real handshake. The TLS layer may refuse a certificate first (OpenSSL checks a client certificate's
    purpose: a serverAuth-only one fails the handshake); what reaches the app must get 401 with the reason."""
    pki = sqlite_api.pki
    app = sqlite_api.new_app(**OWN_BUFFER_PORTS)
    reached_the_app = []
    with running_server(app, pki) as url:
        for name in ("the CA itself", "a service certificate"):
            with httpx.Client(base_url=url, verify=client_tls(pki, name)) as client:
                try:
                    response = client.get("/v1/me")
                except httpx.TransportError:
                    continue  # refused in the handshake: no identity either
                reached_the_app.append(name)
                assert response.status_code == 401, (name, response.text)
                assert impostors[name] in response.json()["detail"], (name, response.text)
        with httpx.Client(base_url=url, verify=client_tls(pki, "alice")) as alice:
            assert alice.get("/v1/me").json()["identity"] == "alice"
    app.state.services.db.dispose()
    assert "the CA itself" in reached_the_app  # the case of the issue: TLS lets it through, the app must refuse it
