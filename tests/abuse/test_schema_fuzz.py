"""schemathesis over the whole API, as every kind of caller: a user (alice: one experiment, no admin), nobody (no
credential), and an admin over the dashboard's JSON routes (/ui/..., /metrics/streams), which /openapi.json does
not publish, so their schema is generated here from the routes. ``tests/api/test_schema_fuzz.py`` fuzzes the
published API as an admin with every schemathesis check; here the number that matters is the server errors.

The dashboard's event streams (``/ui/api/events``, ``.../events``) are left out: they never end for a visible
stream (``test_quotas.py`` and the dashboard tests cover them). Numbers asserted: 5xx answers = 0, over every
operation of each schema, each called at least once.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from photonstream.api.auth.session import CSRF_HEADER
from photonstream.api.ui.ui import router as ui_router
from tests.api.harness import EXPERIMENT, ApiHarness, Pki, stream_request
from tests.store.databases import DatabaseSpec

MAX_EXAMPLES = 20
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip

answers: dict[str, Counter[int]] = {"user": Counter(), "anonymous": Counter(), "dashboard": Counter()}
operations: dict[str, set[str]] = {name: set() for name in answers}
server_errors: list[str] = []


@pytest.fixture(scope="module")
def fuzzed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    root = tmp_path_factory.mktemp("abuse-fuzz")
    spec = DatabaseSpec("sqlite", root)
    data = root / "data" / "{experiment}"
    harness = ApiHarness(spec, pki, root / "state", data_root=str(data), buffer_bind="tcp://127.0.0.1:*")
    alice = harness.client(cert="alice")
    for _ in range(2):  # streams to find: the fuzz's ids are random, the list routes show these
        assert alice.post("/v1/streams", json=stream_request()).status_code == 201
    yield harness
    harness.close()
    spec.close()


def config_for(token: str | None) -> SchemathesisConfig:
    raw: dict[str, Any] = {"phases": {"coverage": {"enabled": False}}}
    if token is not None:
        raw["auth"] = {"openapi": {"HTTPBearer": {"bearer": token}}}
    return SchemathesisConfig.from_dict(raw)


def dashboard_schema(app: FastAPI) -> dict[str, Any]:
    """OpenAPI of the dashboard's routes (hidden from /openapi.json), the login body and CSRF header included."""
    routes = []
    for route in ui_router.routes:
        if getattr(route, "path", "").endswith("/events"):
            continue
        visible = copy.copy(route)
        visible.include_in_schema = True  # type: ignore[attr-defined]
        routes.append(visible)
    schema = get_openapi(title="dashboard", version="1", routes=routes)
    schema.setdefault("components", {})["securitySchemes"] = {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"HTTPBearer": []}]
    csrf = {"name": CSRF_HEADER, "in": "header", "required": False, "schema": {"type": "string", "enum": ["1", "0"]}}
    for path in ("/ui/login", "/ui/logout"):
        schema["paths"][path]["post"].setdefault("parameters", []).append(csrf)
    token_body = {"type": "object", "properties": {"token": {"type": "string"}}, "additionalProperties": True}
    schema["paths"]["/ui/login"]["post"]["requestBody"] = {"content": {"application/json": {"schema": token_body}}}
    return schema


@pytest.fixture(scope="module")
def user_api(fuzzed: ApiHarness) -> schemathesis.BaseSchema:
    token = fuzzed.pki.token("alice", experiments=(EXPERIMENT,), lifetime_s=30 * 86400)
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app, config=config_for(token))


@pytest.fixture(scope="module")
def anonymous_api(fuzzed: ApiHarness) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app, config=config_for(None))


@pytest.fixture(scope="module")
def dashboard_api(fuzzed: ApiHarness) -> schemathesis.BaseSchema:
    fuzzed.services().policy.grant("identity", "root", "*")
    token = fuzzed.pki.token("root", lifetime_s=30 * 86400)
    schema = schemathesis.openapi.from_dict(dashboard_schema(fuzzed.app), config=config_for(token))
    schema.app = fuzzed.app
    return schema


def record(caller: str, case: schemathesis.Case) -> None:
    response = case.call()
    label = f"{case.method} {case.path}"
    answers[caller][response.status_code] += 1
    operations[caller].add(label)
    if response.status_code >= 500:
        server_errors.append(f"{caller}: {label} -> {response.status_code} {response.text[:200]}")


user = schemathesis.pytest.from_fixture("user_api")
anonymous = schemathesis.pytest.from_fixture("anonymous_api")
dashboard = schemathesis.pytest.from_fixture("dashboard_api")


@user.parametrize()
@FUZZ
def test_a_user_fuzzing_the_api(case: schemathesis.Case) -> None:
    record("user", case)


@anonymous.parametrize()
@FUZZ
def test_nobody_fuzzing_the_api(case: schemathesis.Case) -> None:
    record("anonymous", case)


@dashboard.parametrize()
@FUZZ
def test_an_admin_fuzzing_the_dashboard(case: schemathesis.Case) -> None:
    record("dashboard", case)


def test_no_answer_was_a_server_error_and_every_operation_was_called(fuzzed: ApiHarness) -> None:
    """Runs after the fuzzing above (same module)."""
    published = {f"{m.upper()} {p}" for p, ops in fuzzed.app.openapi()["paths"].items() for m in ops}
    assert operations["user"] == published and operations["anonymous"] == published
    assert len(operations["dashboard"]) == len(dashboard_schema(fuzzed.app)["paths"]) + 1  # /ui/login: GET, POST
    assert server_errors == []
    assert sum(answers["anonymous"].values()) >= len(published) and set(answers["anonymous"]) - {401, 404, 405} <= {
        200, 400, 413, 422,
    }  # fmt: skip
    assert answers["user"][403] > 0 and answers["user"][201] > 0  # refused (admin routes) and accepted (streams)
    assert answers["dashboard"][200] > 0
