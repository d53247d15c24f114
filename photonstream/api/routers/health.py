"""/v1/health, /v1/me and /metrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from photonstream.api.deps import Context, Services, context, services
from photonstream.api.routers.streams import AUTH_ERRORS
from photonstream.api.schemas import Health, Me
from photonstream.store.streams import StreamState, StreamStore

router = APIRouter(tags=["service"])


def package_version() -> str:
    try:
        return version("photonstream")
    except PackageNotFoundError:
        return "unknown"


class StreamStateCollector(Collector):
    """Streams per state, counted in the database at scrape time (the same for every API process)."""

    def __init__(self, streams: StreamStore) -> None:
        self.streams = streams

    def collect(self):  # type: ignore[no-untyped-def]
        gauge = GaugeMetricFamily("photonstream_streams", "streams by state", labels=["state"])
        counts = self.streams.count_by_state()
        for state in StreamState:
            gauge.add_metric([state.value], counts.get(state.value, 0))
        yield gauge


@router.get("/v1/health", response_model=Health, summary="Is the service up (no credential needed)")
def health(svc: Services = Depends(services)) -> Health:
    """``degraded`` when a check fails: the database, its schema revision, or the CA's revocation list (while it
    cannot be read every client certificate is refused). Anyone may ask: no check names a path or a secret."""
    reachable = svc.db.ping()
    revision = svc.db.current_revision() if reachable else None
    checks = {
        "database": "ok" if reachable else "unreachable",
        "schema": "ok" if revision == svc.db.head_revision() else f"at {revision}, not {svc.db.head_revision()}",
    }
    verifier = svc.authenticator.certificates
    if verifier is not None:
        problem = verifier.crl_problem()
        checks["crl"] = f"the revocation list {problem}: client certificates are refused" if problem else "ok"
    child = svc.launcher.link.child if svc.launcher.link is not None else None
    if child is not None:
        checks["buffer"] = child.status()  # the embedded buffer's process: down (and why) while it restarts
    return Health(
        status="ok" if all(result == "ok" for result in checks.values()) else "degraded",
        database="ok" if reachable else "unreachable",
        schema_revision=revision,
        version=package_version(),
        auth_modes=list(svc.settings.auth_modes),
        checks=checks,
    )


@router.get("/v1/me", response_model=Me, responses=AUTH_ERRORS, summary="Who the service thinks you are")
def me(ctx: Context = Depends(context)) -> Me:
    p = ctx.principal
    return Me(
        identity=p.identity,
        groups=sorted(p.groups),
        experiments=sorted(p.experiments),
        roles=sorted(p.roles),
        credential=p.credential,
        credential_expires_at=p.expires_at,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
def metrics(svc: Services = Depends(services)) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
