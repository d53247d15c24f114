"""/v1/streams: create, list, show, cancel, logs (the events are ``events.py``).

A stream the caller may not see (another user's, for a caller without operator or admin) answers exactly like one
that does not exist: 404 with the same message, so ids cannot be probed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Annotated

import zmq
from fastapi import APIRouter, Depends, Query, Response

from photonstream.api import limits, quotas
from photonstream.api.binding import bind_pipelines
from photonstream.api.deps import Context, context
from photonstream.api.errors import CredentialLifetimeError, NotFoundError, PermissionDeniedError
from photonstream.api.pools import check_pool_requests
from photonstream.api.schemas import (
    ErrorBody,
    ResultInfo,
    ResultPage,
    RunProgress,
    StreamInfo,
    StreamLogs,
    StreamPage,
    StreamRequest,
    StreamStateName,
    StreamTransitionInfo,
    ValidationErrorBody,
)
from photonstream.api.strict import request_body, strict_body
from photonstream.buffer.credentials import new_token_secret, token_hash
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.store.models import Stream, StreamResult, StreamSecret, utcnow
from photonstream.store.streams import StreamNotFoundError

router = APIRouter(prefix="/v1/streams", tags=["streams"])
log = logging.getLogger("photonstream.api")

AUTH_ERRORS = {
    400: {
        "model": ErrorBody,
        "description": "a body that is not acceptable JSON (the reason says why: not JSON, nested too deep, a number "
        "too long, ...) or a Content-Length that is not a number",
    },
    401: {"model": ErrorBody, "description": "no valid credential"},
    403: {"model": ErrorBody, "description": "not allowed (ungranted experiment, disabled identity)"},
    413: {"model": ErrorBody, "description": "request body too large"},
    422: {"model": ValidationErrorBody, "description": "malformed request; each error names its field"},
}
QUOTA = {429: {"model": ErrorBody, "description": "a quota of the caller is used up (the reason names it)"}}
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such stream (or not yours)"}}


def stream_info(stream: Stream, secret_key: str | None = None, token_password: str | None = None) -> StreamInfo:
    endpoint = json.loads(json.dumps(stream.data_endpoint))
    if secret_key is not None:
        endpoint["curve"]["client_secret_key"] = secret_key
    if token_password is not None and endpoint.get("token"):
        endpoint["token"]["password"] = token_password
    return StreamInfo(
        id=uuid.UUID(stream.id),
        owner=stream.owner,
        experiment=stream.experiment,
        runs=stream.runs,
        detectors=stream.detectors,
        state=stream.state,  # type: ignore[arg-type]
        reason=stream.reason,
        created_at=stream.created_at,
        updated_at=stream.updated_at,
        starting_at=stream.starting_at,
        streaming_at=stream.streaming_at,
        finished_at=stream.finished_at,
        job_backend=stream.job_backend,
        job_id=stream.job_id,
        data_endpoint=endpoint,
        credential_expires_at=stream.credential_expires_at,
        estimated_end_at=stream.estimated_end_at,
        spec=stream.spec.get("request", {}),
    )


def visible_stream(ctx: Context, stream_id: uuid.UUID, action: str) -> Stream:
    """The stream if the caller may see it; 404 (the same for absent and foreign) otherwise, audited either way."""
    obj = f"stream:{stream_id}"
    try:
        stream = ctx.svc.streams.get(str(stream_id))
    except StreamNotFoundError:
        ctx.audit.deny(action, obj, "no such stream")
        raise NotFoundError(f"stream {stream_id} not found") from None
    if not ctx.principal.may_see_stream(stream.owner):
        ctx.audit.deny(action, obj, f"owned by {stream.owner}")
        raise NotFoundError(f"stream {stream_id} not found")
    ctx.audit.allow(action, obj)
    return stream


@router.post(
    "",
    status_code=201,
    response_model=StreamInfo,
    responses={**AUTH_ERRORS, **QUOTA},
    summary="Request a stream",
    openapi_extra=request_body(StreamRequest),
    description="Validates the request, binds the pipeline to the experiment and runs, stores the stream (queued) "
    "and answers with its id, state and data endpoint, including the consumers' CURVE secret key and token (shown "
    "once). "
    "Refused with 422 when the caller's credential expires before the stream's estimated end "
    "(now + resources.time_limit_s).",
)
def create_stream(
    response: Response,
    body: StreamRequest = Depends(strict_body(StreamRequest, StreamRequest.prepare)),
    ctx: Context = Depends(context),
) -> StreamInfo:
    principal, settings = ctx.principal, ctx.svc.settings
    obj = f"experiment:{body.experiment}"
    if not principal.may_read(body.experiment):
        ctx.audit.deny("stream.create", obj, "experiment not granted")
        raise PermissionDeniedError(f"experiment {body.experiment!r} is not granted to {principal.identity!r}")
    backend = body.job_backend or settings.job_backend
    if not ctx.svc.backends.allowed(backend):
        raise ConfigError(f"job_backend: {backend!r} is not one of {', '.join(settings.job_backends)}")
    now = utcnow()
    estimated_end = now + dt.timedelta(seconds=body.resources.time_limit_s)
    if principal.expires_at is not None and principal.expires_at < estimated_end:
        ctx.audit.deny("stream.create", obj, "credential expires before the stream's estimated end")
        raise CredentialLifetimeError(
            f"resources.time_limit_s: your {principal.credential} expires at {principal.expires_at.isoformat()}, "
            f"before the stream's estimated end at {estimated_end.isoformat()}; renew the credential or ask for "
            "a shorter time limit",
            credential_expires_at=principal.expires_at,
            estimated_end_at=estimated_end,
        )
    try:
        check_pool_requests(body, settings, principal)
    except PermissionDeniedError as exc:
        ctx.audit.deny("stream.create", obj, str(exc))
        raise
    try:
        limits.check_request_limits(body, settings)
    except ConfigError as exc:
        ctx.audit.deny("stream.create", obj, f"limit: {exc}")
        raise
    stream_id = uuid.uuid4()
    try:
        pipelines = bind_pipelines(body, stream_id.hex, settings)
    except PermissionDeniedError as exc:
        ctx.audit.deny("stream.create", obj, str(exc))
        raise
    public_key, secret_key = (key.decode() for key in zmq.curve_keypair())
    token_user, token_password = f"c.{stream_id.hex}", new_token_secret()
    link = ctx.svc.launcher.link
    assert link is not None
    endpoint = link.data_endpoint(
        [config.stream.address for config in pipelines],
        public_key,
        token_user,
        [group.model_dump() for group in body.consumers],
    )
    stream = Stream(
        id=str(stream_id),
        owner=principal.identity,
        experiment=body.experiment,
        runs=body.runs,
        detectors=body.detectors,
        spec={
            "request": body.model_dump(mode="json"),
            "pipelines": [config.model_dump(mode="json") for config in pipelines],
        },
        data_endpoint=endpoint,
        consumer_public_key=public_key,
        job_backend=backend,
        credential_kind=principal.credential,
        credential_id=principal.credential_id[:128],
        credential_expires_at=principal.expires_at,
        estimated_end_at=estimated_end,
    )
    with quotas.stream_slot(ctx, obj):
        quotas.pool_worker_slot(ctx, obj, sum(pool.max_workers for pool in body.worker_pools))
        limits.limited_slot(ctx, obj, body)
        secret = StreamSecret(consumer_token_user=token_user, consumer_token_hash=token_hash(token_password))
        stream = ctx.svc.streams.create(stream, actor=principal.identity, secret=secret)
    if link.embedded:  # consumers may connect at once; an external buffer learns it at launch (or the next sync)
        try:
            link.register(stream.id)
        except PhotonstreamError as exc:
            log.warning("stream %s: buffer grant deferred: %s", stream.id, exc)
    ctx.audit.allow("stream.create", obj, f"stream {stream.id}")
    ctx.svc.launcher.wake()
    response.headers["Location"] = f"/v1/streams/{stream.id}"
    return stream_info(stream, secret_key, token_password)


@router.get("", response_model=StreamPage, responses=AUTH_ERRORS, summary="List streams")
def list_streams(
    ctx: Context = Depends(context),
    state: Annotated[list[StreamStateName] | None, Query(description="any of these states")] = None,
    experiment: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = None,
    owner: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> StreamPage:
    """Newest first. A user sees their own streams (asking for another owner gives an empty page); operators and
    admins see every stream."""
    principal = ctx.principal
    limit = min(limit, ctx.svc.settings.page_limit_max)
    if not principal.is_operator:
        if owner is not None and owner != principal.identity:
            ctx.audit.allow("stream.list", f"owner:{owner}", "not visible: empty page")
            return StreamPage(items=[], total=0, offset=offset, limit=limit, next_offset=None)
        owner = principal.identity
    page = ctx.svc.streams.find(states=state or [], experiment=experiment, owner=owner, offset=offset, limit=limit)
    ctx.audit.allow("stream.list", f"owner:{owner or '*'}")
    next_offset = offset + len(page.items) if offset + len(page.items) < page.total else None
    return StreamPage(
        items=[stream_info(s) for s in page.items],
        total=page.total,
        offset=offset,
        limit=limit,
        next_offset=next_offset,
    )


@router.get("/{stream_id}", response_model=StreamInfo, responses={**AUTH_ERRORS, **NOT_FOUND}, summary="Show a stream")
def get_stream(stream_id: uuid.UUID, ctx: Context = Depends(context)) -> StreamInfo:
    return stream_info(visible_stream(ctx, stream_id, "stream.read"))


@router.delete(
    "/{stream_id}",
    response_model=StreamInfo,
    responses={**AUTH_ERRORS, **NOT_FOUND, 409: {"model": ErrorBody, "description": "the stream already ended"}},
    summary="Cancel a stream",
)
def cancel_stream(stream_id: uuid.UUID, ctx: Context = Depends(context)) -> StreamInfo:
    stream = visible_stream(ctx, stream_id, "stream.cancel")
    cancelled, note = ctx.svc.launcher.cancel(stream, ctx.principal.identity)
    if note:
        ctx.audit.record("stream.cancel", f"stream:{stream_id}", "error", note)
    return stream_info(cancelled)


@router.get(
    "/{stream_id}/logs",
    response_model=StreamLogs,
    responses={**AUTH_ERRORS, **NOT_FOUND},
    summary="What the stream's job printed",
)
def stream_logs(
    stream_id: uuid.UUID,
    ctx: Context = Depends(context),
    tail: Annotated[int | None, Query(ge=1, le=100_000, description="last N lines (default 200)")] = None,
    head: Annotated[int | None, Query(ge=1, le=100_000, description="first N lines")] = None,
    max_bytes: Annotated[int, Query(ge=1, le=10 * 1024 * 1024, description="at most this many bytes")] = 65536,
) -> StreamLogs:
    if tail is not None and head is not None:
        raise ConfigError("tail: give tail or head, not both")
    stream = visible_stream(ctx, stream_id, "stream.logs")
    text = ctx.svc.launcher.logs(stream, tail=tail if head is None else None, head=head, max_bytes=max_bytes)
    if head is None and tail is None:
        text = "".join(text.splitlines(keepends=True)[-200:])
    return StreamLogs(stream_id=stream_id, text=text, lines=len(text.splitlines()), bytes=len(text.encode()))


@router.get(
    "/{stream_id}/transitions",
    response_model=list[StreamTransitionInfo],
    responses={**AUTH_ERRORS, **NOT_FOUND},
    summary="Every state the stream entered",
)
def stream_transitions(stream_id: uuid.UUID, ctx: Context = Depends(context)) -> list[StreamTransitionInfo]:
    visible_stream(ctx, stream_id, "stream.read")
    return [
        StreamTransitionInfo(id=t.id, at=t.at, from_state=t.from_state, to_state=t.to_state, reason=t.reason)  # type: ignore[arg-type]
        for t in ctx.svc.streams.transitions(str(stream_id))
    ]


def result_info(row: StreamResult) -> ResultInfo:
    return ResultInfo(
        id=row.id,
        stream_id=uuid.UUID(row.stream_id),
        address=row.address,
        kind=row.kind,
        group=row.group_name,
        worker=row.worker,
        first_frame=row.first_frame,
        last_frame=row.last_frame,
        published_at=row.published_at,
        received_at=row.received_at,
        publisher=row.publisher,
        data=row.data,
    )


@router.get(
    "/{stream_id}/results",
    response_model=ResultPage,
    responses={**AUTH_ERRORS, **NOT_FOUND},
    summary="Results consumers published for the stream (hit rate, unit cell, histograms, ...)",
)
def stream_results(
    stream_id: uuid.UUID,
    ctx: Context = Depends(context),
    after: Annotated[int, Query(ge=0, le=2**62, description="only results after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,64}$", description="only results of this kind")] = None,
) -> ResultPage:
    visible_stream(ctx, stream_id, "stream.results")
    rows = ctx.svc.launcher.reports.results(str(stream_id), after, limit, kind)
    return ResultPage(items=[result_info(r) for r in rows], next_after=rows[-1].id if len(rows) == limit else None)


@router.get(
    "/{stream_id}/progress",
    response_model=list[RunProgress],
    responses={**AUTH_ERRORS, **NOT_FOUND},
    summary="The job's newest progress report per run (counters, rates, end)",
)
def stream_progress(stream_id: uuid.UUID, ctx: Context = Depends(context)) -> list[RunProgress]:
    visible_stream(ctx, stream_id, "stream.read")
    return [
        RunProgress(address=p.address, phase=p.phase, end_reason=p.end_reason, updated_at=p.updated_at, report=p.report)
        for p in ctx.svc.launcher.reports.progress(str(stream_id))
    ]
