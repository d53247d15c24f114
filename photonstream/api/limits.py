"""Service-wide limits on what a stream request may ask for, so that no user can request host-exhausting work.

Per request (422, the error naming the request's field, the setting and its value): the job's ranks, cores
(ranks × cores_per_rank), memory (nodes × memory_mb) and time limit -- and those of each elastic pool's worker --,
the events its source is asked to make (over all runs), and the bytes of one frame of its source (detector shape ×
dtype, for sources that declare it). Per identity (429, ``limited_slot``): the ranks, cores, memory and time
limits of the identity's active streams together, this request included. ``None`` in the settings turns a limit
off. The embedded buffer's disk budgets are settings too (``buffer_disk_per_stream``, ``buffer_disk_total``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from photonstream.api.deps import Context
from photonstream.api.quotas import ACTIVE_STATES, QuotaExceededError
from photonstream.api.schemas import StreamRequest
from photonstream.api.settings import ApiSettings
from photonstream.errors import ConfigError
from photonstream.jobs.base import Resources


@dataclass(frozen=True, slots=True)
class JobLimit:
    """One quantity of a job's resources, limited per request and summed per identity."""

    name: str  # as the settings spell it: max_{name}_per_request, max_{name}_per_user
    field: str  # the request field that sets it (under resources.)
    unit: str
    of: Callable[[Resources], int]


JOB_LIMITS = (
    JobLimit("ranks", "ranks", "ranks", lambda r: r.ranks),
    JobLimit("cores", "cores_per_rank", "cores", lambda r: r.ranks * r.cores_per_rank),
    JobLimit("memory_mb", "memory_mb", "MB", lambda r: r.nodes * (r.memory_mb or 0)),
    JobLimit("time_limit_s", "time_limit_s", "s", lambda r: r.time_limit_s),
)


def check_request_limits(body: StreamRequest, settings: ApiSettings) -> None:
    """Raise ConfigError (422) naming the field and the limit when the request asks for more than one request may."""
    jobs = [("resources", body.resources)]
    jobs += [(f"worker_pools[{i}].resources", pool.resources) for i, pool in enumerate(body.worker_pools)]
    for where, resources in jobs:
        for limit in JOB_LIMITS:
            allowed = getattr(settings, f"max_{limit.name}_per_request")
            asked = limit.of(resources)
            if allowed is not None and asked > allowed:
                raise ConfigError(
                    f"{where}.{limit.field}: the job would take {asked} {limit.unit}; "
                    f"max_{limit.name}_per_request is {allowed}"
                )
    events = requested_events(body)
    if settings.max_events_per_request is not None and events is not None and events > settings.max_events_per_request:
        raise ConfigError(
            f"pipeline.source.events: {events} events over {len(body.runs)} run(s); "
            f"max_events_per_request is {settings.max_events_per_request} (or set pipeline.max_events)"
        )
    frame = getattr(body.pipeline.source, "frame_bytes", None)
    if settings.max_frame_bytes is not None and callable(frame):
        size, option = frame()
        if size > settings.max_frame_bytes:
            raise ConfigError(
                f"pipeline.source.{option}: one frame would hold {size} bytes; "
                f"max_frame_bytes is {settings.max_frame_bytes}"
            )


def requested_events(body: StreamRequest) -> int | None:
    """The events the request asks its source to make, over all runs; None for a source that reads what is there
    (files, a detector's stream): those end with their data, or at the time limit."""
    made = getattr(body.pipeline.source, "events", None)
    if not isinstance(made, int):
        return None
    per_run = made if body.pipeline.max_events is None else min(made, body.pipeline.max_events)
    return per_run * len(body.runs)


def limited_slot(ctx: Context, obj: str, body: StreamRequest) -> None:
    """Refuse (429, audited) a request that would take its caller's active streams past a per-identity total of
    ranks, cores, memory or time. Call inside ``quotas.stream_slot`` (one creation per identity at a time)."""
    svc, identity = ctx.svc, ctx.principal.identity
    limits = [(limit, getattr(svc.settings, f"max_{limit.name}_per_user")) for limit in JOB_LIMITS]
    limits = [(limit, allowed) for limit, allowed in limits if allowed is not None]
    if not limits:
        return
    active = svc.streams.find(states=ACTIVE_STATES, owner=identity, limit=100_000).items
    held = [_resources_of(stream.spec) for stream in active]
    for limit, allowed in limits:
        used = sum(limit.of(resources) for resources in held)
        asked = limit.of(body.resources)
        if used + asked > allowed:
            ctx.audit.deny("stream.create", obj, f"quota: {used} {limit.unit} + {asked} (limit {allowed})")
            raise QuotaExceededError(
                f"max_{limit.name}_per_user: {identity!r} has {used} {limit.unit} in {len(active)} active "
                f"streams and resources.{limit.field} asks for {asked} more (limit {allowed}); ask for less, or "
                "wait until a stream ends"
            )


def _resources_of(spec: dict[str, Any]) -> Resources:
    return Resources.model_validate(spec.get("request", {}).get("resources", {}))
