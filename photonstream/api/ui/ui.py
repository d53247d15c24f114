"""The dashboard at /ui: pages, their live data (server-sent events), the frame picture, per-stream metrics.

Pages are static HTML and script (``static/``); what a page shows comes from the JSON and event routes here,
which authenticate like every API route (client certificate, bearer token, or the session cookie that the login
form sets, see ``auth/session.py``) and show only streams the caller may see: a stream that is not theirs answers
404 exactly like a missing one, for pages too.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from photonstream.api import quotas
from photonstream.api.auth.session import CSRF_HEADER, clear_session_cookie, set_session_cookie
from photonstream.api.deps import Audit, Context, caller, context, services
from photonstream.api.errors import AuthenticationError, NotFoundError
from photonstream.api.json_body import parse_json_body
from photonstream.api.live import CallerWatch
from photonstream.api.monitor import Monitor
from photonstream.api.routers.streams import visible_stream
from photonstream.store.models import Stream
from photonstream.store.streams import StreamNotFoundError

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
UPDATE_S = 1.0
LIST_LIMIT = 50


def monitor_of(request: Request) -> Monitor:
    return request.app.state.monitor  # type: ignore[no-any-return]


def page(name: str, status: int = 200) -> FileResponse:
    return FileResponse(STATIC / name, status_code=status, media_type="text/html", headers=PAGE_HEADERS)


def page_context(request: Request) -> Context | None:
    """The caller of a page, or None when they must log in first (the failure is audited as for any route)."""
    svc = services(request)
    try:
        principal = caller(request, svc, None)
    except AuthenticationError:
        return None
    return Context(principal, svc, Audit(svc, request, principal))


def login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)


def visible_streams(ctx: Context) -> list[Stream]:
    """Newest first: the caller's own streams, or every stream for operators and admins (as GET /v1/streams)."""
    principal = ctx.principal
    owner = None if principal.is_operator else principal.identity
    page_ = ctx.svc.streams.find(owner=owner, limit=LIST_LIMIT)
    return [s for s in page_.items if principal.may_see_stream(s.owner)]


def quiet_visible(ctx: Context, stream_id: uuid.UUID, action: str) -> Stream:
    """As ``visible_stream`` without an audit entry when allowed (for requests a page repeats every second);
    refusals are audited."""
    try:
        stream = ctx.svc.streams.get(str(stream_id))
    except StreamNotFoundError:
        stream = None
    if stream is None or not ctx.principal.may_see_stream(stream.owner):
        return visible_stream(ctx, stream_id, action)  # raises the 404, audited
    return stream


def parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


# --- pages ---------------------------------------------------------------------------------------------------------


@router.get("/ui")
def index(request: Request) -> Response:
    if page_context(request) is None:
        return login_redirect(request)
    return page("index.html")


@router.get("/ui/login")
def login_page(
    next_page: Annotated[str | None, Query(alias="next", max_length=200, description="where to go after")] = None,
) -> Response:
    return page("login.html")


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Check a token as any request would; on success keep it in the session cookie. The body is the credential, so
    it is parsed before authentication here (only here); a malformed one is a 400."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise AuthenticationError(f"login needs the {CSRF_HEADER} header")
    body = await run_in_threadpool(parse_json_body, await request.body())
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise AuthenticationError('login needs a JSON body {"token": "..."}')
    token = token.strip()
    svc = services(request)
    try:
        principal = await run_in_threadpool(svc.authenticator.authenticate, request.scope, f"Bearer {token}")
    except AuthenticationError as exc:
        Audit(svc, request, None).deny("ui.login", "session", str(exc))
        raise
    Audit(svc, request, principal).allow("ui.login", "session")
    response = JSONResponse({"identity": principal.identity, "expires_at": str(principal.expires_at)})
    set_session_cookie(response, token, principal.expires_at)
    return response


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    if request.headers.get(CSRF_HEADER) != "1":
        raise AuthenticationError(f"logout needs the {CSRF_HEADER} header")
    response = JSONResponse({"logged_out": True})
    clear_session_cookie(response)
    return response


@router.get("/ui/streams/{stream_id}")
def stream_page(stream_id: str, request: Request) -> Response:
    ctx = page_context(request)
    if ctx is None:
        return login_redirect(request)
    parsed = parse_id(stream_id)
    try:
        if parsed is None:
            raise NotFoundError(f"stream {stream_id} not found")
        visible_stream(ctx, parsed, "ui.stream")
    except NotFoundError:
        return page("notfound.html", status=404)
    return page("stream.html")


# --- live data -----------------------------------------------------------------------------------------------------


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def _event_stream(request: Request, ctx: Context, produce: Any) -> StreamingResponse:
    """``update`` events each second; ``gone`` when the stream is no longer visible, ``logged-out`` (status,
    reason) when the caller's credential no longer holds (revoked, expired, identity disabled: see ``live``)."""
    watch = CallerWatch(request, services(request))

    async def events() -> AsyncIterator[str]:
        while True:
            refused = await watch.refusal()
            if refused is not None:
                yield _sse("logged-out", {"status": refused.status, "reason": refused.reason})
                return
            try:
                data = await run_in_threadpool(produce)
            except NotFoundError:
                yield _sse("gone", {})
                return
            yield _sse("update", data)
            for _ in range(int(UPDATE_S / 0.25)):
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

    return quotas.event_stream(request, ctx, events())


def _list_view(ctx: Context, monitor: Monitor) -> dict[str, Any]:
    p = ctx.principal
    return {
        "me": {"identity": p.identity, "roles": sorted(p.roles)},
        "streams": [monitor.summary(s) for s in visible_streams(ctx)],
        "buffer_error": monitor.buffer_error,
    }


@router.get("/ui/api/streams")
def list_view(request: Request, ctx: Context = Depends(context)) -> dict[str, Any]:
    ctx.audit.allow("ui.list", f"owner:{'*' if ctx.principal.is_operator else ctx.principal.identity}")
    return _list_view(ctx, monitor_of(request))


@router.get("/ui/api/events")
async def list_events(request: Request, ctx: Context = Depends(context)) -> StreamingResponse:
    ctx.audit.allow("ui.list", f"owner:{'*' if ctx.principal.is_operator else ctx.principal.identity}")
    monitor = monitor_of(request)
    return _event_stream(request, ctx, lambda: _list_view(ctx, monitor))


def _detail(ctx: Context, monitor: Monitor, stream_id: uuid.UUID) -> dict[str, Any]:
    stream = quiet_visible(ctx, stream_id, "ui.stream")
    return {"me": {"identity": ctx.principal.identity}, **monitor.detail(stream)}


@router.get("/ui/api/streams/{stream_id}")
def detail_view(stream_id: uuid.UUID, request: Request, ctx: Context = Depends(context)) -> dict[str, Any]:
    visible_stream(ctx, stream_id, "ui.stream")
    return _detail(ctx, monitor_of(request), stream_id)


@router.get("/ui/api/streams/{stream_id}/events")
async def detail_events(stream_id: uuid.UUID, request: Request, ctx: Context = Depends(context)) -> StreamingResponse:
    await run_in_threadpool(visible_stream, ctx, stream_id, "ui.stream")
    monitor = monitor_of(request)
    return _event_stream(request, ctx, lambda: _detail(ctx, monitor, stream_id))


@router.get("/ui/api/streams/{stream_id}/frame.png")
def frame_png(
    stream_id: uuid.UUID,
    request: Request,
    ctx: Context = Depends(context),
    v: Annotated[int | None, Query(ge=0, description="frame version (the page's cache key)")] = None,
) -> Response:
    """The newest full detector image (a hit's in preference), never a thumbnail: see ``StreamWatch._show``."""
    stream = quiet_visible(ctx, stream_id, "ui.frame")
    watch = monitor_of(request).watch(stream)
    picture = watch.picture() if watch is not None else None
    if picture is None:
        raise NotFoundError(f"stream {stream_id} has no full frame to show yet")
    return Response(picture.png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/ui/api/streams/{stream_id}/thumbnails.png")
def thumbnails_png(
    stream_id: uuid.UUID,
    request: Request,
    ctx: Context = Depends(context),
    v: Annotated[int | None, Query(ge=0, description="thumbnails version (the page's cache key)")] = None,
) -> Response:
    """The newest thumbnails side by side (frames that carry a ``thumbnail`` array, vetoed misses included)."""
    stream = quiet_visible(ctx, stream_id, "ui.frame")
    watch = monitor_of(request).watch(stream)
    strip = watch.strip() if watch is not None else None
    if strip is None:
        raise NotFoundError(f"stream {stream_id} has no thumbnails to show yet")
    return Response(strip.png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/metrics/streams")
def stream_metrics(request: Request, ctx: Context = Depends(context)) -> Response:
    """Per-hop Prometheus metrics of the streams the caller may see (scrape with a token or certificate)."""
    ctx.audit.allow("metrics.streams", f"owner:{'*' if ctx.principal.is_operator else ctx.principal.identity}")
    registry = monitor_of(request).registry_for(visible_streams(ctx))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
