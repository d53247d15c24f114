"""Tokens from an external OIDC issuer, checked against its JWKS served over HTTP by a local server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.api.harness import EXPERIMENT, ApiHarness, stream_request

ISSUER, AUDIENCE, KID = "https://idp.example.test", "photonstream-oidc", "idp-key-1"


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def jwks_url(idp_key: rsa.RSAPrivateKey) -> Iterator[str]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key(), as_dict=True)
    document = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document if self.path == "/jwks.json" else b"{}")

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    thread.join(timeout=5)


def idp_token(key: rsa.RSAPrivateKey, kid: str = KID, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "0f3c-77",
        "preferred_username": "olga",
        "groups": ["sfx"],
        "experiments": [EXPERIMENT],  # not honoured from an external issuer: grants go through the policy
        "iat": now,
        "exp": now + 86400,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def test_external_tokens_are_checked_through_the_issuers_jwks(
    sqlite_api: ApiHarness, jwks_url: str, idp_key: rsa.RSAPrivateKey
) -> None:
    app = sqlite_api.new_app(
        oidc_jwks_url=jwks_url, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_identity_claim="preferred_username"
    )
    olga = sqlite_api.client(token=idp_token(idp_key), app=app)
    me = olga.get("/v1/me").json()
    assert (me["identity"], me["groups"], me["experiments"]) == ("olga", ["sfx"], [])
    assert olga.post("/v1/streams", json=stream_request()).status_code == 403
    grant = {"subject_kind": "group", "subject": "sfx", "experiment": EXPERIMENT}
    sqlite_api.client(cert="root", app=app).post("/v1/admin/grants", json=grant)
    assert olga.post("/v1/streams", json=stream_request()).status_code == 201
    assert sqlite_api.client(token=sqlite_api.pki.token("alice"), app=app).get("/v1/me").status_code == 200  # ours too

    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    for token, message in [
        (idp_token(impostor), "signature is not valid"),
        (idp_token(idp_key, kid="unknown"), "unknown key id"),
        (idp_token(idp_key, aud="someone-else"), "audience"),
        (idp_token(idp_key, iat=now - 7200, exp=now - 3600), "expired"),
        (idp_token(idp_key, iss="https://other-idp.test"), "not trusted"),
        (idp_token(idp_key, preferred_username="o l g a"), "not a valid identity"),
    ]:
        response = sqlite_api.client(token=token, app=app).get("/v1/me")
        assert response.status_code == 401 and message in response.json()["detail"], response.text
    app.state.services.db.dispose()
