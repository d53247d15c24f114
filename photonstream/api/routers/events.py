"""/v1/streams/{id}/events: a stream's state changes, progress, results and pool decisions as server-sent events,
until the stream ends or the caller's credential no longer holds (re-checked every few seconds, see ``live``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from photonstream.api import quotas
from photonstream.api.deps import Context, context
from photonstream.api.live import CallerWatch
from photonstream.api.routers.streams import AUTH_ERRORS, NOT_FOUND, QUOTA, result_info, visible_stream
from photonstream.store.streams import StreamState

router = APIRouter(prefix="/v1/streams", tags=["streams"])
KEEPALIVE_S = 15.0


def _sse(event: str, data: dict[str, object], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get(
    "/{stream_id}/events",
    response_class=StreamingResponse,
    responses={
        **AUTH_ERRORS,
        **NOT_FOUND,
        **QUOTA,
        200: {
            "description": "server-sent events: 'state' per transition (id = transition id), 'progress' per job "
            "report (counters and rates of a run), 'result' per published result, 'pool' per decision of an "
            "elastic worker pool, 'end' when finished; 'error' (status, reason) and the end of the response when "
            "the caller's credential no longer holds (revoked, expired, identity disabled: checked every few "
            "seconds)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
    summary="Follow a stream's state changes (server-sent events)",
)
async def stream_events(
    stream_id: uuid.UUID,
    request: Request,
    ctx: Context = Depends(context),
    after: Annotated[int, Query(ge=0, le=2**62, description="only transitions after this id")] = 0,
    results_after: Annotated[
        int | None, Query(ge=0, le=2**62, description="results after this id (default: only new ones)")
    ] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    await run_in_threadpool(visible_stream, ctx, stream_id, "stream.events")
    if last_event_id and last_event_id.isdigit():
        after = max(after, int(last_event_id))
    poll_s = ctx.svc.settings.events_poll_s
    store = ctx.svc.streams
    reports = ctx.svc.launcher.reports
    pool_events = ctx.svc.launcher.pools.events
    sid = str(stream_id)
    if results_after is None:
        results_after = await run_in_threadpool(reports.newest_result_id, sid)
    watch = CallerWatch(request, ctx.svc)

    async def events() -> AsyncIterator[str]:
        last, quiet_since = after, time.monotonic()
        result_last: int = results_after or 0
        pool_last = 0
        progress_seen: dict[str, dt.datetime] = {}
        while True:
            refused = await watch.refusal()
            if refused is not None:
                yield _sse("error", {"stream_id": sid, "status": refused.status, "reason": refused.reason})
                return
            # state changes first: a progress report read in the same pass came after the change it follows. The
            # state is read before them, so a stream found finished has its last transition among these rows.
            current = await run_in_threadpool(store.get, sid)
            rows = await run_in_threadpool(store.transitions, sid, last)
            for t in rows:
                last = t.id
                data = {"stream_id": sid, "from": t.from_state, "to": t.to_state, "reason": t.reason}
                yield _sse("state", {**data, "at": t.at.isoformat()}, t.id)
                quiet_since = time.monotonic()
            for p in await run_in_threadpool(reports.progress, sid):
                if progress_seen.get(p.address) != p.updated_at:
                    progress_seen[p.address] = p.updated_at
                    yield _sse("progress", {"stream_id": sid, "address": p.address, "phase": p.phase,
                                            "at": p.updated_at.isoformat(), **p.report})  # fmt: skip
                    quiet_since = time.monotonic()
            for r in await run_in_threadpool(reports.results, sid, result_last, 200):
                result_last = r.id
                yield _sse("result", result_info(r).model_dump(mode="json"))
                quiet_since = time.monotonic()
            for e in await run_in_threadpool(pool_events.events, sid, pool_last, 200):
                pool_last = e.id
                decision = {"pool": e.pool, "action": e.action, "workers": e.workers, "lag": e.lag, "detail": e.detail}
                yield _sse("pool", {"stream_id": sid, "id": e.id, "at": e.at.isoformat(), **decision})
                quiet_since = time.monotonic()
            if StreamState(current.state).finished and not rows:
                yield _sse("end", {"stream_id": str(stream_id), "state": current.state, "reason": current.reason})
                return
            if await request.is_disconnected():
                return
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(poll_s)

    return quotas.event_stream(request, ctx, events())
