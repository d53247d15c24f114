"""The bad-credential matrix, on SQLite and PostgreSQL: each refused with the right status, none leaking whether a
foreign stream exists, every decision in the audit log. Plus roles, the token-lifetime rule and revocation by the
admin API, all without restarting the app.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from photonstream.api.auth.ca import CertificateAuthority
from tests.api.harness import AUDIENCE, EXPERIMENT, OTHER_EXPERIMENT, ApiHarness, stream_request


def detail(response: Any) -> Any:
    body = response.json()
    body.pop("request_id", None)
    return body


def create(api: ApiHarness, who: str, **changes: Any) -> str:
    response = api.client(cert=who).post("/v1/streams", json=stream_request(**changes))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(
    ("credential", "message"),
    [
        ({}, "no credential"),
        ({"cert": "alice@other-ca"}, "not issued by this service's CA"),
        ({"cert": "alice@expired"}, "expired at"),
        ({"token": "bad-signature"}, "signature is not valid"),
        ({"token": "other-issuer-key"}, "signature is not valid"),
        ({"token": "wrong-audience"}, "audience"),
        ({"token": "expired"}, "token has expired"),
        ({"token": "garbage"}, "not a well-formed JWT"),
    ],
)
def test_bad_credentials_are_refused_with_401(api: ApiHarness, credential: dict[str, str], message: str) -> None:
    pki = api.pki
    good = pki.token("alice", (EXPERIMENT,))
    header, _payload, signature = good.split(".")
    other = pki.token("alice", (EXPERIMENT,)).split(".")[1]
    tokens = {
        "bad-signature": f"{header}.{other}.{signature}",  # alice's valid signature over another token's claims
        "other-issuer-key": pki.token("alice", (EXPERIMENT,), ca=pki.other_ca),
        "wrong-audience": pki.token("alice", (EXPERIMENT,), audience="another-service"),
        "expired": pki.token("alice", lifetime_s=60, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
        "garbage": "not.a.token",
    }
    client = api.client(cert=credential.get("cert"), token=tokens.get(credential.get("token", "")))
    stream_id = create(api, "alice")
    for method, path in [
        ("GET", "/v1/streams"),
        ("POST", "/v1/streams"),
        ("GET", f"/v1/streams/{stream_id}"),
        ("DELETE", f"/v1/streams/{stream_id}"),
        ("GET", f"/v1/streams/{uuid.uuid4()}"),
        ("GET", "/v1/datasets"),
    ]:
        response = client.request(method, path, json=stream_request() if method == "POST" else None)
        assert response.status_code == 401, (method, path, response.text)
        assert message in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.client(cert="alice").get(f"/v1/streams/{stream_id}").json()["state"] == "queued"  # nothing happened
    denials = api.services().policy.audit_entries(action="authenticate")
    assert len(denials) == 6 and all(e.outcome == "deny" and message in e.detail for e in denials)


def test_an_ungranted_experiment_is_forbidden_and_audited(api: ApiHarness) -> None:
    response = api.client(cert="alice").post("/v1/streams", json=stream_request(OTHER_EXPERIMENT))
    assert response.status_code == 403
    assert response.json()["detail"] == f"experiment '{OTHER_EXPERIMENT}' is not granted to 'alice'"
    [entry] = api.services().policy.audit_entries(action="stream.create")
    assert (entry.identity, entry.object, entry.outcome) == ("alice", f"experiment:{OTHER_EXPERIMENT}", "deny")
    assert api.client(cert="alice").get("/v1/streams").json()["total"] == 0


def test_another_users_stream_reads_exactly_like_a_missing_one(api: ApiHarness) -> None:
    alices = create(api, "alice")
    missing = str(uuid.uuid4())
    bob = api.client(cert="bob")
    for suffix, method in [("", "GET"), ("", "DELETE"), ("/logs", "GET"), ("/events", "GET"), ("/transitions", "GET")]:
        foreign = bob.request(method, f"/v1/streams/{alices}{suffix}")
        absent = bob.request(method, f"/v1/streams/{missing}{suffix}")
        assert foreign.status_code == absent.status_code == 404
        assert detail(foreign)["detail"].replace(alices, "ID") == detail(absent)["detail"].replace(missing, "ID")
        assert foreign.headers.keys() == absent.headers.keys()
    assert bob.get("/v1/streams").json()["total"] == 0
    assert bob.get("/v1/streams", params={"owner": "alice"}).json() == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 50,
        "next_offset": None,
    }
    assert api.client(cert="alice").get(f"/v1/streams/{alices}").json()["state"] == "queued"  # bob's DELETE: no effect
    denied = [e for e in api.services().policy.audit_entries(identity="bob") if e.outcome == "deny"]
    assert {e.object for e in denied} == {f"stream:{alices}", f"stream:{missing}"}
    assert {e.detail for e in denied} == {"owned by alice", "no such stream"}  # the log tells them apart, callers not


def test_operators_see_and_cancel_every_stream_admins_manage_policy(api: ApiHarness) -> None:
    alices = create(api, "alice")
    carol = api.client(cert="carol")  # operator through her certificate's group 'ops'
    assert carol.get(f"/v1/streams/{alices}").status_code == 200
    assert carol.get("/v1/streams", params={"owner": "alice"}).json()["total"] == 1
    assert carol.get("/v1/admin/policy").status_code == 403
    cancelled = carol.delete(f"/v1/streams/{alices}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert "cancelled by carol" in cancelled.json()["reason"]
    again = carol.delete(f"/v1/streams/{alices}")
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]

    root = api.client(cert="root")
    assert root.post("/v1/streams", json=stream_request(OTHER_EXPERIMENT)).status_code == 403  # admin ≠ data access
    grant = {"subject_kind": "identity", "subject": "bob", "experiment": OTHER_EXPERIMENT}
    assert root.post("/v1/admin/grants", json=grant).json() == {"changed": True}
    assert api.client(cert="bob").post("/v1/streams", json=stream_request(OTHER_EXPERIMENT)).status_code == 201
    params = {k: grant[k] for k in ("subject_kind", "subject", "experiment")}
    assert root.delete("/v1/admin/grants", params=params).json() == {"changed": True}
    assert api.client(cert="bob").post("/v1/streams", json=stream_request(OTHER_EXPERIMENT)).status_code == 403
    assert api.client(cert="alice").post("/v1/admin/grants", json=grant).status_code == 403
    audit = root.get("/v1/admin/audit", params={"action": "policy.grant"}).json()
    assert [(e["identity"], e["object"], e["outcome"]) for e in audit] == [("root", "identity:bob", "allow")]


def test_revocation_takes_effect_on_the_next_request(api: ApiHarness, tmp_path: Path) -> None:
    pki = api.pki
    eve = pki.add_user(f"eve-{uuid.uuid4().hex[:8]}", [EXPERIMENT], tmp_path)
    assert api.client(cert=eve).get("/v1/me").json()["identity"] == eve
    CertificateAuthority(pki.ca.directory).revoke(pki.serial(eve))  # what 'photonstream ca revoke' does
    response = api.client(cert=eve).get("/v1/me")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]

    # the admin API's revocation table: a certificate and a token
    bob_name = pki.add_user(f"bob-{uuid.uuid4().hex[:8]}", [EXPERIMENT], tmp_path)
    bob = api.client(cert=bob_name)
    assert bob.get("/v1/me").status_code == 200
    root = api.client(cert="root")
    body = {"kind": "certificate", "credential_id": pki.serial(bob_name).upper(), "reason": "left the group"}
    assert root.post("/v1/admin/revocations", json=body).json() == {"changed": True}
    assert bob.get("/v1/me").status_code == 401
    token = pki.token("alice", (EXPERIMENT,))
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert api.client(token=token).get("/v1/me").status_code == 200
    assert root.post("/v1/admin/revocations", json={"kind": "token", "credential_id": jti}).status_code == 200
    refused = api.client(token=token).get("/v1/me")
    assert refused.status_code == 401 and refused.json()["detail"] == "token is revoked"
    assert [r["credential_id"] for r in root.get("/v1/admin/revocations").json()] == [pki.serial(bob_name), jti]


def test_disabled_identities_are_forbidden(api: ApiHarness) -> None:
    root = api.client(cert="root")
    assert root.put("/v1/admin/identities", json={"identity": "alice", "disabled": True}).status_code == 200
    response = api.client(cert="alice").get("/v1/me")
    assert response.status_code == 403 and "disabled" in response.json()["detail"]
    root.put("/v1/admin/identities", json={"identity": "alice", "disabled": False})
    assert api.client(cert="alice").get("/v1/me").status_code == 200


def test_certificate_and_token_must_name_the_same_identity(api: ApiHarness) -> None:
    both = api.client(cert="alice", token=api.pki.token("alice", groups=("g1",)))
    me = both.get("/v1/me").json()
    assert (me["identity"], me["credential"], me["groups"]) == ("alice", "certificate+token", ["g1"])
    mixed = api.client(cert="alice", token=api.pki.token("bob"))
    assert mixed.get("/v1/me").status_code == 401


def test_required_certificates_refuse_a_token_alone(api: ApiHarness) -> None:
    app = api.new_app(client_certificates="required")
    token = api.pki.token("alice", (EXPERIMENT,))
    refused = api.client(token=token, app=app).get("/v1/me")
    assert refused.status_code == 401 and "requires one" in refused.json()["detail"]
    assert api.client(cert="alice", token=token, app=app).get("/v1/me").status_code == 200
    tokens_only = api.new_app(client_certificates="off")
    assert api.client(cert="alice", app=tokens_only).get("/v1/me").status_code == 401  # a certificate is not read


def test_a_credential_expiring_before_the_stream_ends_is_refused_naming_both_times(api: ApiHarness) -> None:
    short = api.client(token=api.pki.token("alice", (EXPERIMENT,), lifetime_s=900))
    response = short.post("/v1/streams", json=stream_request(resources={"time_limit_s": 3600}))
    assert response.status_code == 422
    body = response.json()
    expires = dt.datetime.fromisoformat(body["credential_expires_at"])
    end = dt.datetime.fromisoformat(body["estimated_end_at"])
    assert expires < end and dt.timedelta(minutes=40) < end - expires < dt.timedelta(minutes=50)
    [error] = body["detail"]
    assert error["field"] == "resources.time_limit_s"
    assert expires.isoformat() in error["msg"] and end.isoformat() in error["msg"]
    accepted = short.post("/v1/streams", json=stream_request(resources={"time_limit_s": 600}))
    assert accepted.status_code == 201
    assert accepted.json()["credential_expires_at"] is not None


def test_grants_come_from_credentials_and_from_the_policy(api: ApiHarness) -> None:
    token = api.pki.token("dave", groups=("sfx",))  # no experiments in the token
    dave = api.client(token=token)
    assert dave.post("/v1/streams", json=stream_request()).status_code == 403
    root = api.client(cert="root")
    root.post("/v1/admin/grants", json={"subject_kind": "group", "subject": "sfx", "experiment": EXPERIMENT})
    assert dave.post("/v1/streams", json=stream_request()).status_code == 201
    root.post("/v1/admin/members", json={"group": "ops", "identity": "dave"})
    assert "operator" in dave.get("/v1/me").json()["roles"]


def test_datasets_list_only_granted_experiments(api: ApiHarness) -> None:
    root = api.client(cert="root")
    for experiment, run in [(EXPERIMENT, 1), (EXPERIMENT, 2), (OTHER_EXPERIMENT, 7)]:
        body = {"experiment": experiment, "run": run, "detectors": ["epix10k2m"], "size_bytes": 10**9, "events": 1200}
        assert root.put("/v1/admin/datasets", json=body).status_code == 200
    items = api.client(cert="alice").get("/v1/datasets").json()["items"]
    assert [(d["experiment"], d["run"]) for d in items] == [(EXPERIMENT, 1), (EXPERIMENT, 2)]
    assert api.client(cert="carol").get("/v1/datasets").json()["items"] == []
    root.post("/v1/admin/grants", json={"subject_kind": "group", "subject": "ops", "experiment": "*"})
    assert len(api.client(cert="carol").get("/v1/datasets").json()["items"]) == 3


def test_audience_of_tokens_is_checked_against_settings(api: ApiHarness) -> None:
    app = api.new_app(token_audience="beamline-7")
    assert api.client(token=api.pki.token("alice"), app=app).get("/v1/me").status_code == 401
    assert api.client(token=api.pki.token("alice", audience="beamline-7"), app=app).get("/v1/me").status_code == 200
    assert AUDIENCE != "beamline-7"
