"""Malformed bodies of every kind on every route that takes a body (issue 13, defect 4).

Before: arrays nested 1000 deep and objects 50000 deep (RecursionError) and a 5000-digit integer (ValueError)
answered 500 on ``POST /v1/streams`` and ``/ui/login``, and the body was parsed before authentication, so an
unauthenticated POST got field-by-field 422s. Now: 400 with the reason for every malformed body, 401 (403 for a
caller who is not an admin) before any body is looked at, and nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from photonstream import reporting
from photonstream.api.errors import MalformedBodyError
from photonstream.api.json_body import MAX_DEPTH, parse_json_body
from tests.adversarial.support import OWN_BUFFER_PORTS
from tests.api.harness import ApiHarness, stream_request
from tests.api.servers import client_tls, running_server

JSON = {"content-type": "application/json"}
HOSTILE_BODIES: dict[str, bytes] = {
    "arrays 1000 deep": b"[" * 1000 + b"]" * 1000,
    "arrays 100000 deep, unclosed": b"[" * 100_000,
    "objects 50000 deep": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "a 5000-digit integer in a field": b'{"experiment": "xpp00001", "runs": [' + b"9" * 5000 + b"]}",
    "a 5000-digit integer alone": b"9" * 5000,
    "a float that overflows": b'{"runs": [1e999999]}',
    "NaN": b'{"runs": [NaN]}',
    "Infinity": b"[Infinity]",
    "-Infinity": b'{"x": -Infinity}',
    "truncated": b'{"experiment": "xpp',
    "form-encoded": b"experiment=xpp00001",
    "empty": b"",
    "only whitespace": b" \n\t ",
    "not UTF-8": b'{"experiment": "\xff\xfe"}',
    "UTF-16": '{"experiment": "xpp00001"}'.encode("utf-16"),
    "a UTF-8 byte-order mark": b'\xef\xbb\xbf{"experiment": "xpp00001"}',
    "a duplicate key": b'{"experiment": "xpp00001", "experiment": "mfx00002"}',
    "a lone surrogate": b'{"experiment": "\\ud800"}',
    "NUL in a string": b'{"reason": "a\\u0000b"}',
    "a raw newline in a string": b'{"experiment": "a\nb"}',
    "two documents": b'{"experiment": "xpp00001"} {}',
    "a trailing comma": b'{"experiment": "xpp00001",}',
    "single quotes": b"{'experiment': 'xpp00001'}",
}
# the routes of people (certificate or token) that take a body, and who may call them
BODY_ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/v1/streams", "alice"),
    ("POST", "/v1/admin/grants", "root"),
    ("POST", "/v1/admin/roles", "root"),
    ("POST", "/v1/admin/members", "root"),
    ("PUT", "/v1/admin/identities", "root"),
    ("POST", "/v1/admin/revocations", "root"),
    ("PUT", "/v1/admin/datasets", "root"),
]
LOGIN, LOGOUT, REPORT = "/ui/login", "/ui/logout", "/v1/internal/streams/{stream_id}/report"


def send(client: Any, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.request(method, path, content=body, headers={**JSON, **(headers or {})})


def refusals(responses: dict[str, Any], status: int, reason: str | None = None) -> list[str]:
    """Every response that is not ``status`` with a one-line ``detail`` (containing ``reason``) and a request id."""
    wrong = []
    for name, response in responses.items():
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail")
        ok = response.status_code == status and isinstance(detail, str) and detail and body.get("request_id")
        if ok and reason is not None:
            ok = reason in detail
        if not ok:
            wrong.append(f"{name}: {response.status_code} {response.text[:200]}")
    return wrong


def stored_state(api: ApiHarness) -> dict[str, Any]:
    """What a body could change: the policy (less when identities were last seen), revocations, datasets, streams."""
    svc = api.services()
    policy = svc.policy.snapshot()
    policy["identities"] = [(i["name"], i["disabled"]) for i in policy["identities"]]
    return {
        "policy": policy,
        "revocations": len(svc.policy.revocations()),
        "datasets": len(svc.policy.datasets(None)),
        "streams": svc.streams.find().total,
    }


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI >= 0.16x keeps them behind the router object)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        yield from api_routes(inner.routes if inner is not None else getattr(route, "routes", []))


def test_the_table_holds_every_route_that_takes_a_body(sqlite_api: ApiHarness) -> None:
    taking = {
        (method, route.path)
        for route in api_routes(sqlite_api.app.routes)
        for method in route.methods & {"POST", "PUT", "PATCH"}
    }
    known = {(method, path) for method, path, _who in BODY_ROUTES}
    assert taking == known | {("POST", LOGIN), ("POST", LOGOUT), ("POST", REPORT)}


@pytest.mark.parametrize(("method", "path", "who"), BODY_ROUTES, ids=[path for _m, path, _w in BODY_ROUTES])
def test_a_malformed_body_is_400_with_its_reason_and_changes_nothing(
    api: ApiHarness, method: str, path: str, who: str
) -> None:
    client = api.client(cert=who)
    assert client.get("/v1/me").status_code == 200  # the caller is known before, as after
    before = stored_state(api)
    responses = {name: send(client, method, path, body) for name, body in HOSTILE_BODIES.items()}
    assert refusals(responses, 400, "the body") == []
    assert stored_state(api) == before


@pytest.mark.parametrize(("method", "path", "who"), BODY_ROUTES, ids=[path for _m, path, _w in BODY_ROUTES])
def test_without_a_credential_every_body_gets_401_before_it_is_parsed(
    api: ApiHarness, method: str, path: str, who: str
) -> None:
    anonymous = api.client()
    bodies = {**HOSTILE_BODIES, "fields of the wrong types": json.dumps({"experiment": 5, "runs": "x"}).encode()}
    responses = {name: send(anonymous, method, path, body) for name, body in bodies.items()}
    assert refusals(responses, 401, "no credential") == []
    assert all(r.headers["www-authenticate"].startswith("Bearer") for r in responses.values())


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, who in BODY_ROUTES if who == "root"])
def test_a_caller_who_is_not_an_admin_is_refused_before_the_body_is_parsed(
    sqlite_api: ApiHarness, method: str, path: str
) -> None:
    alice = sqlite_api.client(cert="alice")
    bodies = {**HOSTILE_BODIES, "fields of the wrong types": b'{"subject": 5}'}
    responses = {name: send(alice, method, path, body) for name, body in bodies.items()}
    assert refusals(responses, 403, "not an admin") == []


def test_login_answers_400_for_a_malformed_body_and_401_without_its_header(sqlite_api: ApiHarness) -> None:
    anonymous = sqlite_api.client()
    csrf = {"X-Photonstream-CSRF": "1"}
    responses = {name: send(anonymous, "POST", LOGIN, body, csrf) for name, body in HOSTILE_BODIES.items()}
    assert refusals(responses, 400, "the body") == []
    without_header = {name: send(anonymous, "POST", LOGIN, body) for name, body in HOSTILE_BODIES.items()}
    assert refusals(without_header, 401, "header") == []
    wrong_shape = send(anonymous, "POST", LOGIN, b'{"token": 5}', csrf)
    assert wrong_shape.status_code == 401 and "token" in wrong_shape.json()["detail"]


def test_a_job_report_is_checked_for_its_signature_first_then_for_its_body(sqlite_api: ApiHarness) -> None:
    created = sqlite_api.client(cert="alice").post("/v1/streams", json=stream_request())
    assert created.status_code == 201, created.text
    stream_id = created.json()["id"]
    secret = "report-secret-of-the-test"
    sqlite_api.services().launcher.reports.set_job_secrets(
        stream_id, producer_public_key="", producer_token_user="", producer_token_hash="", report_secret=secret
    )
    path = REPORT.format(stream_id=stream_id)
    job = sqlite_api.client()
    unsigned = {name: send(job, "POST", path, body) for name, body in HOSTILE_BODIES.items()}
    assert refusals(unsigned, 401, "signature") == []
    signed = {
        name: send(job, "POST", path, body, reporting.signed_headers(secret, path, body))
        for name, body in HOSTILE_BODIES.items()
    }
    assert refusals(signed, 400, "the body") == []
    denials = sqlite_api.services().policy.audit_entries(action="stream.report")
    assert len(denials) == 2 * len(HOSTILE_BODIES) and {e.outcome for e in denials} == {"deny"}


def test_the_cases_of_the_issue_over_tls_answer_400_and_401_never_500(sqlite_api: ApiHarness) -> None:
    pki = sqlite_api.pki
    app = sqlite_api.new_app(**OWN_BUFFER_PORTS)
    cases = {name: HOSTILE_BODIES[name] for name in ("arrays 1000 deep", "objects 50000 deep")}
    cases["a 5000-digit integer"] = json.dumps(stream_request()).replace('"runs": [1]', '"runs": [' + "9" * 5000 + "]")
    with running_server(app, pki) as url:
        with httpx.Client(base_url=url, verify=client_tls(pki, "alice")) as alice:
            owned = {name: send(alice, "POST", "/v1/streams", body) for name, body in cases.items()}
            assert refusals(owned, 400, "the body") == []
        with httpx.Client(base_url=url, verify=client_tls(pki)) as anonymous:
            unowned = {name: send(anonymous, "POST", "/v1/streams", body) for name, body in cases.items()}
            assert refusals(unowned, 401, "no credential") == []
            login = {
                name: send(anonymous, "POST", LOGIN, body, {"X-Photonstream-CSRF": "1"}) for name, body in cases.items()
            }
            assert refusals(login, 400, "the body") == []
            assert anonymous.get("/v1/health").status_code == 200
    app.state.services.db.dispose()


@pytest.mark.parametrize(
    "body",
    [
        b'{"experiment": "' + b"[" * 500 + b'"}',  # brackets inside a string do not nest
        b'{"experiment": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
        b"[" * MAX_DEPTH + b"]" * MAX_DEPTH,
        b'{"runs": [' + b"9" * 100 + b"]}",
        b'{"reason": "\\ud83d\\ude00 caf\\u00e9"}',
    ],
)
def test_acceptable_json_near_the_limits_is_read(body: bytes) -> None:
    assert parse_json_body(body) is not None


def test_the_limits_themselves_are_refused() -> None:
    with pytest.raises(MalformedBodyError, match=f"deeper than {MAX_DEPTH}"):
        parse_json_body(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(MalformedBodyError, match="number of 101 characters"):
        parse_json_body(b"[" + b"9" * 101 + b"]")
