"""The FastAPI app factory: ``create_app(settings)`` opens the database (migrating it), wires authentication, the
launcher and the routes, and maps errors onto HTTP statuses:

- ``PhotonstreamError`` → its ``http_status`` with ``{"detail": ...}`` (a 422 as a list of field errors);
- a body that is not acceptable JSON → 400 with its reason (``json_body``, a ``MalformedBodyError``);
- requests of the wrong shape → 422, each error with ``loc`` and a readable ``field`` path;
- anything else → 500 with only a request id (the traceback goes to the log, never to the caller).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from photonstream.api import ui
from photonstream.api.auth.ca import format_serial
from photonstream.api.auth.certificates import CertificateVerifier
from photonstream.api.auth.gate import ClientCertificateGate
from photonstream.api.auth.principal import Authenticator
from photonstream.api.auth.tokens import OwnIssuerKeys, TokenVerifier
from photonstream.api.buffer_link import BufferLink
from photonstream.api.deps import Services
from photonstream.api.errors import CredentialLifetimeError
from photonstream.api.launcher import Backends, Launcher
from photonstream.api.middleware import ApiMetrics, BodySizeLimitMiddleware, RequestContextMiddleware, request_id_of
from photonstream.api.monitor import Monitor
from photonstream.api.routers import admin, analysis, datasets, events, health, internal, pools, streams
from photonstream.api.settings import ApiSettings
from photonstream.api.strict import install_body_schemas
from photonstream.config.pipeline import PLUGIN_NAMES
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.jobs.base import JobBackend
from photonstream.store.db import Database
from photonstream.store.policy import PolicyStore
from photonstream.store.reports import ReportStore
from photonstream.store.streams import StreamStore

log = logging.getLogger("photonstream.api")

DESCRIPTION = """Request streams of X-ray experiment data; follow and cancel them.

Authenticate with a client certificate from the service's CA (mutual TLS), a bearer token (our issuer or the
configured OIDC issuer), or both, as the service is configured. Every decision is audited."""


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'pipeline', 'steps', 1, 'roi', 'x0') → 'pipeline.steps[1].x0' (the union's plugin tag dropped)."""
    out = ""
    previous: Any = None
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    for part in parts:
        tag_position = previous in ("source", "serializer") or isinstance(previous, int)
        if isinstance(part, str) and tag_position and (part in PLUGIN_NAMES or part.startswith("function-")):
            previous = part
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(body)"


def _loc_of(field: str) -> list[str | int]:
    loc: list[str | int] = ["body"]
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        loc.append(int(index) if index else name)
    return loc


def _error_response(request: Request, exc: PhotonstreamError) -> JSONResponse:
    status = exc.http_status
    rid = request_id_of(request.scope)
    body: dict[str, Any]
    if status == 422:
        message = str(exc)
        field, sep, msg = message.partition(": ")
        if not sep or " " in field.strip():
            field, msg = "(body)", message
        body = {"detail": [{"loc": _loc_of(field), "field": field, "msg": msg, "type": "value_error"}]}
        if isinstance(exc, CredentialLifetimeError):
            body.update({k: v.isoformat() for k, v in exc.extra.items()})
    else:
        body = {"detail": str(exc)}
    body["request_id"] = rid
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="photonstream"'
    if status >= 500:
        log.error("request %s: %s: %s", rid, type(exc).__name__, exc)
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PhotonstreamError)
    async def photonstream_error(request: Request, exc: PhotonstreamError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                "field": field_path(e.get("loc", ())),
                "msg": e.get("msg", "invalid"),
                "type": e.get("type", "value_error"),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors, "request_id": request_id_of(request.scope)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        rid = request_id_of(request.scope)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # name every method of the path, not only those of the first route matched
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return JSONResponse(
            {"detail": str(exc.detail), "request_id": rid}, status_code=exc.status_code, headers=headers
        )


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods.update(route.methods)  # type: ignore[attr-defined]
    return sorted(methods)


def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the operation does not declare (a typo must not be ignored silently)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known: set[str] = set()
    pending = [dependant]
    while pending:  # the route's own parameters and those of its dependencies
        current = pending.pop()
        known.update(param.alias for param in current.query_params)
        pending.extend(current.dependencies)
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": "unknown query parameter", "type": "extra_forbidden"} for name in unknown]
        )


def require_union_tags(schema: dict[str, Any]) -> dict[str, Any]:
    """Mark each plugin option's ``type`` required in the published schema: the discriminated unions need it,
    though the models give it a default (it names the model)."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        tag = component.get("properties", {}).get("type")
        if isinstance(tag, dict) and "const" in tag and "type" not in component.get("required", []):
            component["required"] = [*component.get("required", []), "type"]
    return schema


def install_openapi(app: FastAPI) -> None:
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            install_body_schemas(schema)
            app.openapi_schema = require_union_tags(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_services(settings: ApiSettings, backends: dict[str, JobBackend] | None = None) -> Services:
    db = Database(settings.resolved_database_url, schema=settings.database_schema)
    if settings.migrate_on_startup:
        db.upgrade()
    certificates = None
    if settings.client_certificates != "off":
        if settings.ca_dir is None:
            raise ConfigError("ca_dir: client certificates need the CA directory (ca.crt, crl.pem)")
        certificates = CertificateVerifier(settings.ca_dir)
    tokens = None
    if settings.tokens:
        own = OwnIssuerKeys(settings.ca_dir) if settings.ca_dir is not None else None
        if own is None and not settings.oidc_jwks_url:
            raise ConfigError("tokens: need ca_dir (our issuer's token.jwks.json) or oidc_jwks_url")
        tokens = TokenVerifier(
            own_keys=own,
            own_issuer=settings.token_issuer,
            audience=settings.token_audience,
            oidc_jwks_url=settings.oidc_jwks_url,
            oidc_issuer=settings.oidc_issuer,
            oidc_audience=settings.oidc_audience,
            oidc_identity_claim=settings.oidc_identity_claim,
        )
    policy = PolicyStore(db)
    stream_store = StreamStore(db)
    reports = ReportStore(db)
    link = BufferLink(settings, reports)
    if certificates is not None:  # `photonstream ca revoke` writes only the CRL: its streams lose their grants too
        verifier = certificates

        def revoked_on_the_crl() -> frozenset[tuple[str, str]]:
            return frozenset(("certificate", format_serial(n)) for n in verifier.last_known_revoked_serials())

        link.revoked_elsewhere = revoked_on_the_crl
    pool = Backends(settings, backends)
    return Services(
        settings=settings,
        db=db,
        streams=stream_store,
        policy=policy,
        authenticator=Authenticator(
            certificates_mode=settings.client_certificates,
            accept_tokens=settings.tokens,
            certificates=certificates,
            tokens=tokens,
            policy=policy,
            admins=set(settings.admins),
        ),
        backends=pool,
        launcher=Launcher(settings, stream_store, pool, link, reports),
        metrics=ApiMetrics(),
    )


def results_reader(reports: ReportStore) -> Any:
    """The dashboard's results channel: a stream's stored results after an id, as plain dicts."""

    def read(stream_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "group": r.group_name,
                "worker": r.worker,
                "address": r.address,
                "first_frame": r.first_frame,
                "last_frame": r.last_frame,
                **r.data,
            }
            for r in reports.results(stream_id, after, limit)
        ]

    return read


def create_app(settings: ApiSettings | None = None, backends: dict[str, JobBackend] | None = None) -> FastAPI:
    """The API for ``settings``; ``backends`` replaces job backends by name (else they are made on first use)."""
    settings = settings or ApiSettings()
    svc = build_services(settings, backends)
    svc.metrics.registry.register(health.StreamStateCollector(svc.streams))

    link = svc.launcher.link
    assert link is not None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        link.start()  # the embedded buffer (if any) first: the launcher's jobs write to it
        if settings.launcher:
            svc.launcher.start()
        try:
            yield
        finally:
            svc.launcher.stop()
            link.stop()
            svc.backends.close()
            svc.db.dispose()

    app = FastAPI(
        title="photonstream",
        version=health.package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.services = svc
    install_error_handlers(app)
    install_openapi(app)
    for module in (streams, analysis, events, pools, datasets, health, admin, internal):
        app.include_router(module.router)
    monitor = Monitor(link.stats, link.subscriber(), results=results_reader(svc.launcher.reports))
    ui.install(app, monitor)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    verifier = svc.authenticator.certificates
    if settings.client_certificates == "required" and verifier is not None:  # inside the request id, before bodies
        app.add_middleware(ClientCertificateGate, verifier=verifier)
    app.add_middleware(RequestContextMiddleware, metrics=svc.metrics)
    return app
