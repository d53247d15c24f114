"""A CA with users, tokens, and API apps on a test database, called as a TLS server would call them.

``ApiHarness.client(cert=...)`` puts the certificate where uvicorn (through ``TLSInfoH11Protocol``) puts it: the
ASGI TLS extension of the request's scope. ``tests/api/test_tls.py`` checks that path over real TLS.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from photonstream.api.app import create_app
from photonstream.api.auth.ca import CertificateAuthority
from photonstream.api.auth.tokens import issue_token
from photonstream.api.settings import ApiSettings
from tests.api.pki import expired_client_certificate
from tests.store.databases import DatabaseSpec

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette asks for httpx2 in its TestClient; httpx is what we have
    from fastapi.testclient import TestClient

ISSUER, AUDIENCE = "photonstream", "photonstream-api"
EXPERIMENT, OTHER_EXPERIMENT = "xpp00001", "mfx00002"


class Pki:
    """Our CA with alice and bob (users), carol (operator by group), root (admin); another CA; bad certificates."""

    def __init__(self, root: Path) -> None:
        self.ca = CertificateAuthority.init(root / "ca", common_name="test CA")
        self.certs: dict[str, tuple[Path, Path]] = {}
        for name, experiments, groups in [
            ("alice", [EXPERIMENT], []),
            ("bob", [EXPERIMENT], []),
            ("carol", [], ["ops"]),
            ("root", [], []),
        ]:
            issued = self.ca.issue_user(name, experiments, groups, days=5, out_dir=root / "users")
            self.certs[name] = (issued.certificate, issued.private_key)
        other = CertificateAuthority.init(root / "other-ca", common_name="test CA")
        issued = other.issue_user("alice", [EXPERIMENT], out_dir=root / "other")
        self.certs["alice@other-ca"] = (issued.certificate, issued.private_key)
        self.certs["alice@expired"] = expired_client_certificate(self.ca, "alice", root / "expired")
        service = self.ca.issue_service("api", out_dir=root / "service")
        self.service = (service.certificate, service.private_key)
        self.other_ca = other

    def add_user(self, name: str, experiments: list[str], out_dir: Path) -> str:
        """Issue one more user certificate (e.g. one a test revokes); returns the name to pass as ``cert``."""
        issued = self.ca.issue_user(name, experiments, days=5, out_dir=out_dir)
        self.certs[name] = (issued.certificate, issued.private_key)
        return name

    def pem(self, name: str) -> str:
        return self.certs[name][0].read_text()

    def serial(self, name: str) -> str:
        from photonstream.api.auth.ca import load_certificate
        from photonstream.api.auth.certificates import claims_of

        return claims_of(load_certificate(self.certs[name][0])).serial

    def token(
        self,
        identity: str,
        experiments: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
        lifetime_s: int = 86400,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        ca: CertificateAuthority | None = None,
        now: dt.datetime | None = None,
    ) -> str:
        return issue_token(
            ca or self.ca,
            identity,
            issuer=issuer,
            audience=audience,
            lifetime_s=lifetime_s,
            experiments=experiments,
            groups=groups,
            now=now,
        )


def with_client_certificate(app: FastAPI, pem: str | None) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if pem is not None and scope["type"] == "http":
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem]}
        await app(scope, receive, send)

    return wrapped


class ApiHarness:
    def __init__(self, database: DatabaseSpec, pki: Pki, state_dir: Path, **settings: Any) -> None:
        self.database = database
        self.pki = pki
        # free ports, never the defaults: a 'photonstream serve' may be running beside the tests
        settings.setdefault("buffer_bind", "tcp://127.0.0.1:*")
        settings.setdefault("buffer_token_bind", "tcp://127.0.0.1:*")
        self.settings = ApiSettings(
            state_dir=state_dir,
            database_url=database.url,
            database_schema=database.schema,
            ca_dir=pki.ca.directory,
            launcher=False,
            admins=["root"],
            **settings,
        )
        self.app = self.new_app()

    def new_app(self, **changes: Any) -> FastAPI:
        """A new app object on the same database and state: what a restart gives."""
        settings = self.settings.model_copy(update=changes) if changes else self.settings
        app = create_app(settings)
        self._bootstrap(app)
        return app

    @staticmethod
    def _bootstrap(app: FastAPI) -> None:
        policy = app.state.services.policy
        policy.bind_role("group", "ops", "operator")

    def services(self, app: FastAPI | None = None) -> Any:
        return (app or self.app).state.services

    def client(self, cert: str | None = None, token: str | None = None, app: FastAPI | None = None) -> TestClient:
        pem = self.pki.pem(cert) if cert else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return TestClient(with_client_certificate(app or self.app, pem), headers=headers)

    def close(self) -> None:
        services = self.app.state.services
        services.launcher.stop()
        services.backends.close()
        services.db.dispose()


def stream_request(experiment: str = EXPERIMENT, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experiment": experiment,
        "runs": [1],
        "detectors": [],
        "pipeline": {"source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": 3}},
        "resources": {"time_limit_s": 600},
    }
    body.update(changes)
    return body


def step_until(api: ApiHarness, stream_id: str, states: set[str], timeout: float = 90.0) -> dict[str, Any]:
    """Run the launcher step by step until alice's stream reaches one of ``states``; its view then."""
    launcher = api.services().launcher
    alice = api.client(cert="alice")
    deadline = time.monotonic() + timeout
    while True:
        launcher.step()
        shown = alice.get(f"/v1/streams/{stream_id}").json()
        if shown["state"] in states:
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"stream stayed {shown['state']}: {shown['reason']}")
        time.sleep(0.1)
