"""Elastic worker pools: a stream's pools and their decisions (``/v1/streams/{id}/pools``), and the catalog of
worker kinds a request may name (``/v1/worker-kinds``). See ``photonstream.api.pools``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from photonstream.api.deps import Context, context
from photonstream.api.routers.streams import AUTH_ERRORS, NOT_FOUND, visible_stream
from photonstream.api.schemas import PoolEventInfo, PoolStatus, StreamPools, WorkerKindInfo
from photonstream.api.worker_kinds import merged_worker_kinds
from photonstream.store.models import StreamPoolEvent

router = APIRouter(tags=["pools"])


def pool_event_info(row: StreamPoolEvent) -> PoolEventInfo:
    return PoolEventInfo(id=row.id, pool=row.pool, at=row.at, action=row.action, workers=row.workers, lag=row.lag,
                         members=row.members, detail=row.detail, jobs=list(row.jobs or []))  # fmt: skip


@router.get(
    "/v1/streams/{stream_id}/pools",
    response_model=StreamPools,
    responses={**AUTH_ERRORS, **NOT_FOUND},
    summary="The stream's elastic worker pools and their decisions",
)
def stream_pools(
    stream_id: uuid.UUID,
    ctx: Context = Depends(context),
    after: Annotated[int, Query(ge=0, le=2**62, description="only events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> StreamPools:
    stream = visible_stream(ctx, stream_id, "stream.read")
    store = ctx.svc.launcher.pools.events
    newest = store.newest(stream.id)
    live = ctx.svc.launcher.pools.live_workers(stream.id)
    pools = []
    for pool in stream.spec.get("request", {}).get("worker_pools", []):
        last = newest.get(pool["name"])
        if last is None:
            state = "waiting"
        elif last.action in ("stopped", "interrupted"):
            state = last.action
        else:
            state = "running"
        pools.append(
            PoolStatus(
                name=pool["name"], group=pool["group"], kind=pool["kind"], min_workers=pool["min_workers"],
                max_workers=pool["max_workers"], target_lag=pool["target_lag"], state=state,  # type: ignore[arg-type]
                workers=last.workers if last is not None else 0, lag=last.lag if last is not None else None,
                last_action=last.action if last is not None else None, live_jobs=live.get(pool["name"], []),
            )
        )  # fmt: skip
    rows = store.events(stream.id, after, limit)
    return StreamPools(
        stream_id=stream_id,
        pools=pools,
        events=[pool_event_info(row) for row in rows],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


@router.get(
    "/v1/worker-kinds",
    response_model=list[WorkerKindInfo],
    responses=AUTH_ERRORS,
    summary="Worker kinds a request's worker_pools may run, with their options",
)
def worker_kinds(ctx: Context = Depends(context)) -> list[WorkerKindInfo]:
    kinds = merged_worker_kinds(ctx.svc.settings.worker_kinds)
    return [
        WorkerKindInfo(
            name=name,
            description=kind.description,
            options={key: option.model_dump() for key, option in kind.options.items()},
            roles=kind.roles,
        )
        for name, kind in sorted(kinds.items())
    ]
