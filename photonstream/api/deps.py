"""What every route needs: the services of its app, the caller (authenticated), and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from photonstream.api.auth.principal import Authenticator, Principal
from photonstream.api.auth.session import session_authorization
from photonstream.api.errors import AuthenticationError, PermissionDeniedError
from photonstream.api.launcher import Backends, Launcher
from photonstream.api.middleware import ApiMetrics
from photonstream.api.settings import ApiSettings
from photonstream.store.db import Database
from photonstream.store.policy import PolicyStore
from photonstream.store.streams import StreamStore

# documents the bearer scheme in OpenAPI; the header itself is read by ``caller`` (mutual TLS works without it)
bearer_scheme = HTTPBearer(auto_error=False, description="JWT from our issuer or the configured OIDC issuer")


@dataclass
class Services:
    settings: ApiSettings
    db: Database
    streams: StreamStore
    policy: PolicyStore
    authenticator: Authenticator
    backends: Backends
    launcher: Launcher
    metrics: ApiMetrics


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


class Audit:
    """Writes one audit entry per decision: identity, action, object, outcome."""

    def __init__(self, svc: Services, request: Request, principal: Principal | None) -> None:
        self.svc = svc
        self.request_id = (request.scope.get("state") or {}).get("request_id", "")
        self.identity = principal.identity if principal else "-"

    def record(self, action: str, obj: str, outcome: str, detail: str = "") -> None:
        self.svc.policy.audit(self.identity, action, obj, outcome, detail, self.request_id)
        self.svc.metrics.auth.labels(outcome).inc()

    def allow(self, action: str, obj: str, detail: str = "") -> None:
        self.record(action, obj, "allow", detail)

    def deny(self, action: str, obj: str, detail: str = "") -> None:
        self.record(action, obj, "deny", detail)


def caller(request: Request, svc: Services = Depends(services), _scheme: object = Depends(bearer_scheme)) -> Principal:
    """The authenticated principal, or 401 (403 for a disabled identity); failures are audited."""
    try:
        authorization = request.headers.get("authorization") or session_authorization(request)
        return svc.authenticator.authenticate(request.scope, authorization)
    except (AuthenticationError, PermissionDeniedError) as exc:
        Audit(svc, request, None).deny("authenticate", f"{request.method} {request.url.path}", str(exc))
        raise


@dataclass
class Context:
    """The caller with its services and audit trail, as routes use them."""

    principal: Principal
    svc: Services
    audit: Audit


def context(request: Request, principal: Principal = Depends(caller), svc: Services = Depends(services)) -> Context:
    return Context(principal, svc, Audit(svc, request, principal))


def admin_context(request: Request, ctx: Context = Depends(context)) -> Context:
    if not ctx.principal.is_admin:
        ctx.audit.deny("admin", f"{request.method} {request.url.path}", "not an admin")
        raise PermissionDeniedError(f"{ctx.principal.identity!r} is not an admin")
    return ctx
