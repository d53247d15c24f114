"""Revocation while a response is still being sent (issue 13, defect 5).

Before: an SSE ``/v1/streams/{id}/events`` connection kept delivering after its certificate was revoked (``ca
revoke``, the CRL), for as long as it stayed open. Now every long-lived response re-checks its caller every
``live.RECHECK_S`` and ends with a final event naming the reason: ``error`` on ``/v1/streams/{id}/events``,
``logged-out`` on the dashboard's ``/ui/api/events`` and ``/ui/api/streams/{id}/events``.

Every kind of long-lived connection × every kind of revocation, over real TLS, at once: a certificate on the CRL,
a certificate in the revocation table, a token in the revocation table, a disabled identity, and a dashboard session
(the login cookie) whose token is revoked. A connection of a caller who keeps their credential stays open.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest

from photonstream.api.auth.ca import CertificateAuthority
from photonstream.api.live import RECHECK_S
from tests.adversarial.support import OWN_BUFFER_PORTS
from tests.api.harness import EXPERIMENT, ApiHarness, stream_request
from tests.api.servers import client_tls, running_server

CLOSED_WITHIN_S = RECHECK_S + 6.0  # a re-check, then a poll of the event loop, on a loaded machine
FINAL_EVENTS = {"/v1": "error", "/ui": "logged-out"}


@dataclass
class Connection:
    """One event stream read in a thread: its events (name, data, when) and whether the server ended it."""

    name: str
    path: str
    client: httpx.Client
    events: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    status: int | None = None
    ended_at: float | None = None
    error: str | None = None
    opened: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        try:
            with self.client.stream("GET", self.path, timeout=httpx.Timeout(10.0, read=60.0)) as response:
                self.status = response.status_code
                self.opened.set()
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        continue
                    if line:
                        key, _, value = line.partition(": ")
                        fields[key] = value
                        continue
                    if "event" in fields:
                        self.events.append((fields["event"], json.loads(fields.get("data", "{}")), time.monotonic()))
                    fields = {}
            self.ended_at = time.monotonic()
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.opened.set()

    def final(self) -> tuple[str, dict[str, Any]] | None:
        return self.events[-1][:2] if self.events and self.ended_at is not None else None


@pytest.fixture()
def served(sqlite_api: ApiHarness) -> Iterator[tuple[ApiHarness, str]]:
    app = sqlite_api.new_app(**OWN_BUFFER_PORTS)
    with running_server(app, sqlite_api.pki) as url:
        yield sqlite_api, url
    app.state.services.db.dispose()


def test_every_long_lived_connection_ends_when_its_credential_is_revoked(
    served: tuple[ApiHarness, str], tmp_path: Any
) -> None:
    api, url = served
    pki = api.pki
    tag = uuid.uuid4().hex[:6]
    crl_user = pki.add_user(f"crl-{tag}", [EXPERIMENT], tmp_path / "crl")
    table_user = pki.add_user(f"table-{tag}", [EXPERIMENT], tmp_path / "table")
    disabled_user = pki.add_user(f"off-{tag}", [EXPERIMENT], tmp_path / "off")
    token_user, session_user = f"tok-{tag}", f"session-{tag}"
    token, session_token = pki.token(token_user, (EXPERIMENT,)), pki.token(session_user, (EXPERIMENT,))

    def client(cert: str | None = None, bearer: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.Client(base_url=url, verify=client_tls(pki, cert), headers=headers)

    callers = {
        "certificate on the CRL": client(cert=crl_user),
        "certificate in the revocation table": client(cert=table_user),
        "token in the revocation table": client(bearer=token),
        "identity disabled": client(cert=disabled_user),
        "dashboard session, token revoked": client(),
        "alice, not revoked": client(cert="alice"),
    }
    login = callers["dashboard session, token revoked"].post(
        "/ui/login", json={"token": session_token}, headers={"X-Photonstream-CSRF": "1"}
    )
    assert login.status_code == 200, login.text
    connections: list[Connection] = []
    for who, http in callers.items():
        created = http.post("/v1/streams", json=stream_request(), headers={"X-Photonstream-CSRF": "1"})
        assert created.status_code == 201, (who, created.text)
        stream_id = created.json()["id"]  # queued for good: the launcher is off, the streams never end by themselves
        for path in (f"/v1/streams/{stream_id}/events", "/ui/api/events", f"/ui/api/streams/{stream_id}/events"):
            connections.append(Connection(who, path, http))
    threads = [threading.Thread(target=c.read, daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    for c in connections:
        assert c.opened.wait(30) and c.status == 200, (c.name, c.path, c.status, c.error)
    deadline = time.monotonic() + 30
    while any(not c.events for c in connections) and time.monotonic() < deadline:
        time.sleep(0.1)  # each delivers before the revocation: the queued stream's state, or a dashboard update
    assert [(c.name, c.path) for c in connections if not c.events] == []

    root = httpx.Client(base_url=url, verify=client_tls(pki, "root"))
    CertificateAuthority(pki.ca.directory).revoke(pki.serial(crl_user))  # what 'photonstream ca revoke' does
    changes = [
        root.post("/v1/admin/revocations", json={"kind": "certificate", "credential_id": pki.serial(table_user)}),
        root.put("/v1/admin/identities", json={"identity": disabled_user, "disabled": True}),
    ]
    for revoked in (token, session_token):
        jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
        changes.append(root.post("/v1/admin/revocations", json={"kind": "token", "credential_id": jti}))
    assert [r.status_code for r in changes] == [200] * 4, [r.text for r in changes]
    revoked_at = time.monotonic()

    for thread, c in zip(threads, connections, strict=True):
        if c.name != "alice, not revoked":
            thread.join(timeout=max(0.0, revoked_at + CLOSED_WITHIN_S - time.monotonic()))
    expected_reason = {
        "certificate on the CRL": (401, "is revoked"),
        "certificate in the revocation table": (401, "is revoked"),
        "token in the revocation table": (401, "token is revoked"),
        "identity disabled": (403, "is disabled"),
        "dashboard session, token revoked": (401, "token is revoked"),
    }
    wrong = []
    for c in connections:
        if c.name == "alice, not revoked":
            continue
        final = c.final()
        status, reason = expected_reason[c.name]
        wanted = FINAL_EVENTS[c.path[:3]]
        if (
            final is None
            or final[0] != wanted
            or final[1].get("status") != status
            or reason not in final[1].get("reason", "")
        ):
            wrong.append(f"{c.name} {c.path}: ended={c.ended_at is not None} last={c.events[-1:]} error={c.error}")
        elif c.ended_at - revoked_at > CLOSED_WITHIN_S:  # type: ignore[operator]
            wrong.append(f"{c.name} {c.path}: ended {c.ended_at - revoked_at:.1f} s after the revocation")  # type: ignore[operator]
    assert wrong == []

    for c in connections:
        if c.name == "alice, not revoked":
            assert c.ended_at is None and c.error is None, (c.path, c.events[-1:], c.error)
    alice_ui = next(c for c in connections if c.name == "alice, not revoked" and c.path == "/ui/api/events")
    assert any(at > revoked_at and name == "update" for name, _data, at in alice_ui.events)
    audit = api.services().policy.audit_entries(action="authenticate", limit=1000)
    assert len([e for e in audit if e.outcome == "deny"]) >= len(expected_reason) * 3  # each refusal audited
    for http in [*callers.values(), root]:
        http.close()
