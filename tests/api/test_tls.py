"""Mutual TLS over a real connection: uvicorn verifies the chain, TLSInfoH11Protocol hands the certificate to the
app, the app reads identity and grants from it and refuses a revoked one without a restart.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from photonstream.api.server import INSECURE_WARNING, server_config
from photonstream.errors import ConfigError
from tests.api.harness import EXPERIMENT, ApiHarness
from tests.api.servers import client_tls, running_server


def test_required_client_certificates_over_tls(sqlite_api: ApiHarness, tmp_path: Path) -> None:
    pki = sqlite_api.pki
    app = sqlite_api.new_app(client_certificates="required")
    frank = pki.add_user(f"frank-{uuid.uuid4().hex[:6]}", [EXPERIMENT], tmp_path)
    with running_server(app, pki) as url:
        with httpx.Client(base_url=url, verify=client_tls(pki, "alice")) as alice:
            me = alice.get("/v1/me").json()
            assert (me["identity"], me["credential"], me["experiments"]) == ("alice", "certificate", [EXPERIMENT])
        for refused in ("alice@other-ca", "alice@expired"):  # a certificate that does not verify fails the handshake
            with (
                httpx.Client(base_url=url, verify=client_tls(pki, refused)) as client,
                pytest.raises(httpx.TransportError),
            ):
                client.get("/v1/me")
        with httpx.Client(base_url=url, verify=client_tls(pki, frank)) as client:
            assert client.get("/v1/me").status_code == 200
            pki.ca.revoke(pki.serial(frank))  # the CRL changes under the running server
            response = client.get("/v1/me")
            assert response.status_code == 401 and "revoked" in response.json()["detail"]
    app.state.services.db.dispose()


def test_optional_client_certificates_let_tokens_in(sqlite_api: ApiHarness) -> None:
    pki = sqlite_api.pki
    token = pki.token("bob", (EXPERIMENT,))
    with running_server(sqlite_api.app, pki) as url:
        with httpx.Client(base_url=url, verify=client_tls(pki)) as anonymous:
            assert anonymous.get("/v1/health").status_code == 200
            refused = anonymous.get("/v1/me")
            assert refused.status_code == 401 and "no credential" in refused.json()["detail"]
            me = anonymous.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
            assert (me["identity"], me["credential"]) == ("bob", "token")
        with httpx.Client(base_url=url, verify=client_tls(pki, "alice")) as alice:
            assert alice.get("/v1/me").json()["credential"] == "certificate"


def test_plain_http_only_with_tokens_and_a_loud_warning(
    sqlite_api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    pki = sqlite_api.pki
    with pytest.raises(ConfigError, match="plain HTTP carries no client certificates"):
        server_config(sqlite_api.app, sqlite_api.settings, insecure_http=True)
    with pytest.raises(ConfigError, match="HTTPS needs the service certificate"):
        server_config(sqlite_api.app, sqlite_api.settings)
    app = sqlite_api.new_app(client_certificates="off")
    with running_server(app, pki, insecure_http=True) as url:
        assert url.startswith("http://")
        headers = {"Authorization": f"Bearer {pki.token('alice')}"}
        assert httpx.get(f"{url}/v1/me", headers=headers).json()["identity"] == "alice"
    assert INSECURE_WARNING in caplog.text
    app.state.services.db.dispose()
