"""Per-identity quotas of the API: active streams, elastic pool workers, and server-sent-event connections held
open at once.

Past a quota the request is refused with 429 and a reason naming the quota (its setting), the identity's use and
the limit. Quotas count per identity whatever the role; ``None`` in the settings turns one off.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from fastapi import Request
from fastapi.responses import StreamingResponse

from photonstream.api.deps import Context
from photonstream.errors import PhotonstreamError

ACTIVE_STATES = ["queued", "starting", "streaming"]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class QuotaExceededError(PhotonstreamError):
    """An identity used up one of its quotas (active streams, event connections). (429)"""

    http_status = 429


_stream_locks: dict[str, threading.Lock] = {}
_stream_locks_guard = threading.Lock()


@contextmanager
def stream_slot(ctx: Context, obj: str) -> Iterator[None]:
    """Hold while creating a stream: refuses (audited) when the caller has ``max_active_streams_per_user`` active
    streams (queued, starting, streaming); one creation per identity at a time, so parallel requests cannot
    overshoot."""
    svc, identity = ctx.svc, ctx.principal.identity
    limit = svc.settings.max_active_streams_per_user
    with _stream_locks_guard:
        lock = _stream_locks.setdefault(identity, threading.Lock())
    with lock:  # also without this quota: the per-identity totals checked inside (pool workers, resources) need it
        if limit is None:
            yield
            return
        active = svc.streams.find(states=ACTIVE_STATES, owner=identity, limit=1).total
        if active >= limit:
            ctx.audit.deny("stream.create", obj, f"quota: {active} active streams (limit {limit})")
            raise QuotaExceededError(
                f"max_active_streams_per_user: {identity!r} has {active} active streams (limit {limit}); "
                "cancel one or wait until one ends"
            )
        yield


def pool_worker_slot(ctx: Context, obj: str, requested: int) -> None:
    """Refuse (audited) a request whose pools would take the caller past ``max_pool_workers_per_user``: the
    ``max_workers`` of the pools of their active streams, summed. Call inside ``stream_slot``."""
    from photonstream.api.pools import requested_workers

    svc, identity = ctx.svc, ctx.principal.identity
    limit = svc.settings.max_pool_workers_per_user
    if limit is None or requested == 0:
        return
    active = svc.streams.find(states=ACTIVE_STATES, owner=identity, limit=100_000).items
    used = sum(requested_workers(stream.spec) for stream in active)
    if used + requested > limit:
        ctx.audit.deny("stream.create", obj, f"quota: {used} pool workers + {requested} (limit {limit})")
        raise QuotaExceededError(
            f"max_pool_workers_per_user: {identity!r} has pools of up to {used} workers in active streams and asks "
            f"for {requested} more (limit {limit}); lower max_workers, or wait until a stream ends"
        )


class EventConnections:
    """Server-sent-event connections open per identity."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, identity: str) -> None:
        with self._lock:
            if self.limit is not None and self.open[identity] >= self.limit:
                raise QuotaExceededError(
                    f"max_event_connections_per_user: {identity!r} has {self.open[identity]} event connections "
                    f"open (limit {self.limit}); close one first"
                )
            self.open[identity] += 1

    def release(self, identity: str) -> None:
        with self._lock:
            self.open[identity] -= 1
            if self.open[identity] <= 0:
                del self.open[identity]


def event_connections(request: Request) -> EventConnections:
    state = request.app.state
    found = getattr(state, "event_connections", None)
    if found is None:
        found = EventConnections(request.app.state.services.settings.max_event_connections_per_user)
        state.event_connections = found
    return found  # type: ignore[no-any-return]


def event_stream(request: Request, ctx: Context, events: AsyncIterator[str]) -> StreamingResponse:
    """``events`` as a text/event-stream response counted against the caller's event-connection quota (429 when
    it is used up, audited); the connection is given back when the stream ends, the client leaves, or it never
    started."""
    connections = event_connections(request)
    identity = ctx.principal.identity
    try:
        connections.acquire(identity)
    except QuotaExceededError as exc:
        ctx.audit.deny("events", request.url.path, str(exc))
        raise
    once = threading.Lock()

    def release() -> None:
        if once.acquire(blocking=False):  # succeeds only the first time: the connection is given back once
            connections.release(identity)

    async def counted() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        finally:
            release()

    body = counted()
    weakref.finalize(body, release)  # a response that was never sent gives its connection back too
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
