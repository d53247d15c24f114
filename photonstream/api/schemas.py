"""Request and response bodies of the API (``/v1``); the typed client reads the same models.

A stream request names data (experiment, runs, detectors), what to do with it (a pipeline without handlers: the
service sends every stream to its buffer), who consumes it (consumer groups with loss policies) and where it runs
(job backend and resources).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from photonstream.config.pipeline import SerializerConfig, SourceConfig, StepConfig
from photonstream.jobs.base import Resources
from photonstream.serializers.base import registry as serializer_registry
from photonstream.sources.base import registry as source_registry

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
IDENTITY = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
POLICY = r"^(lossless|latest|decimate:[1-9][0-9]{0,8}|sample:[0-9]{1,9}(\.[0-9]{1,9})?)$"
StreamStateName = Literal["queued", "starting", "streaming", "completed", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelineSpec(Strict):
    """The processing part of a pipeline config: source, steps and serializer (handlers are the service's)."""

    source: SourceConfig  # type: ignore[valid-type]
    steps: list[StepConfig] = Field(default_factory=list, max_length=64)  # type: ignore[valid-type]
    serializer: SerializerConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: serializer_registry.get("msgpack").Options()
    )
    max_events: int | None = Field(None, ge=0, description="stop after this many source events (per run)")


class ConsumerGroup(Strict):
    """A consumer group of the stream's buffer: members share its messages; the policy decides loss."""

    name: str = Field(pattern=NAME, description="group name, e.g. indexers")
    policy: str = Field(
        "lossless", pattern=POLICY, description="lossless | latest | decimate:N | sample:RATE (per second)"
    )

    @field_validator("policy")
    @classmethod
    def _positive_rate(cls, value: str) -> str:
        if value.startswith("sample:") and float(value.split(":", 1)[1]) <= 0:
            raise ValueError("sample:RATE needs RATE > 0")
        return value


class PoolRequest(Strict):
    """An elastic worker pool for one lossless consumer group of the request: workers of a catalog kind, as many as
    the group's lag asks for between min_workers and max_workers (see photonstream.jobs.elastic)."""

    name: str = Field(pattern=NAME, description="pool name, unique in the request")
    group: str = Field(pattern=NAME, description="a lossless consumer group of this request")
    kind: str = Field(pattern=NAME, description="a worker kind of the service's catalog (GET /v1/worker-kinds)")
    options: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")], Annotated[str, Field(max_length=256)]] = (
        Field(default_factory=dict, max_length=16, description="the kind's options (each checked by its pattern)")
    )
    min_workers: int = Field(1, ge=1, le=10_000)
    max_workers: int = Field(4, ge=1, le=10_000)
    target_lag: int = Field(100, ge=1, le=10**9, description="unfinished messages of the group the pool aims at")
    scale_down_below: float = Field(0.25, gt=0.0, lt=1.0)
    scale_up_cooldown_s: float = Field(10.0, ge=0.0, le=86_400.0)
    scale_down_cooldown_s: float = Field(30.0, ge=0.0, le=86_400.0)
    max_step: int = Field(4, ge=1, le=10_000)
    max_failures: int = Field(10, ge=0, le=10_000)
    stop_grace_s: float = Field(30.0, ge=0.0, le=86_400.0)
    interval_s: float = Field(2.0, ge=0.2, le=3600.0, description="seconds between two decisions")
    join_timeout_s: float = Field(60.0, ge=0.0, le=86_400.0)
    resources: Resources = Field(default_factory=Resources, description="what one worker asks of the scheduler")

    @model_validator(mode="after")
    def _bounds(self) -> PoolRequest:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) exceeds max_workers ({self.max_workers})")
        if self.resources.array is not None:
            raise ValueError("resources.array: the pool forms its own arrays (one task per worker); leave array unset")
        return self


EXAMPLE_REQUEST = {
    "experiment": "xpp00001",
    "runs": [12],
    "detectors": ["epix10k2m"],
    "pipeline": {
        "source": {"type": "synthetic-diffraction", "detector": "epix10k2m", "events": 1000, "rate_hz": 120.0},
        "steps": [{"type": "hitfinder"}, {"type": "filter", "where": {"hit": {"==": True}}}],
        "serializer": {"type": "msgpack"},
    },
    "consumers": [{"name": "indexers", "policy": "lossless"}, {"name": "monitor", "policy": "sample:2"}],
    "resources": {"time_limit_s": 1800},
}


class StreamRequest(Strict):
    """POST /v1/streams."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    experiment: str = Field(pattern=NAME, description="experiment to read, e.g. xpptut15")
    runs: list[Annotated[int, Field(ge=0, le=10**9)]] = Field(
        min_length=1,
        max_length=64,
        description="run numbers, each once (several need a source with runs)",
        json_schema_extra={"uniqueItems": True},
    )
    detectors: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list, max_length=16, description="detectors to read"
    )
    pipeline: PipelineSpec
    consumers: list[ConsumerGroup] = Field(
        default_factory=lambda: [ConsumerGroup(name="default")], min_length=1, max_length=32
    )
    job_backend: str | None = Field(None, pattern=NAME, description="where the job runs (default: the service's)")
    resources: Resources = Field(default_factory=Resources)
    worker_pools: list[PoolRequest] = Field(
        default_factory=list, max_length=8, description="elastic worker pools run on the job backend (one per group)"
    )

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """Complete a parsed request: a source with exp/run options (psana) gets them from the request, so it need
        not repeat them. (Not a validator: the server validates the completed JSON in strict mode.)"""
        if not isinstance(data, dict) or not isinstance(data.get("pipeline"), dict):
            return data
        source = data["pipeline"].get("source")
        runs = data.get("runs")
        if not isinstance(source, dict) or source.get("files") or not isinstance(runs, list) or not runs:
            return data
        try:
            fields = source_registry.get(source.get("type")).Options.model_fields
        except (LookupError, TypeError):
            return data
        if "run" not in fields:
            return data
        filled = dict(source)
        if filled.get("run") is None:
            filled["run"] = runs[0]
        if "exp" in fields and filled.get("exp") is None:
            filled["exp"] = data.get("experiment")
        return {**data, "pipeline": {**data["pipeline"], "source": filled}}

    @field_validator("runs")
    @classmethod
    def _runs(cls, runs: list[int]) -> list[int]:
        if len(set(runs)) != len(runs):
            raise ValueError("runs must not repeat")
        return runs

    @model_validator(mode="after")
    def _unique_groups(self) -> StreamRequest:
        names = [group.name for group in self.consumers]
        if len(set(names)) != len(names):
            raise ValueError("consumers: group names must be unique")
        return self


class CurveCredentials(BaseModel):
    """ZeroMQ CURVE keys (Z85) for the stream's consumers; the secret key is shown once, in the create response."""

    server_public_key: str | None = Field(None, description="the buffer's public key (None: buffer without CURVE)")
    client_public_key: str
    client_secret_key: str | None = Field(None, description="only in the response to POST /v1/streams")


class TokenCredentials(BaseModel):
    """The stream's token for the buffer's token link (ZAP PLAIN: authenticated, not encrypted; inside one
    facility only, since the secret and the data cross the network in clear). The password is shown once."""

    address: str = Field(description="the buffer's token endpoint")
    username: str
    password: str | None = Field(None, description="only in the response to POST /v1/streams")


class DataEndpoint(BaseModel):
    """What a consumer needs to read the stream from the buffer (``photonstream.client.subscribe_stream``)."""

    address: str = Field(description="the buffer's main endpoint, e.g. tcp://buffer.example:5600")
    security: Literal["curve", "token", "none"] = Field(
        "curve", description="security of 'address': curve (authenticated, encrypted) or none (test/demo buffer)"
    )
    streams: list[str] = Field(description="buffer stream addresses experiment/run/stream-id, one per run")
    consumer_groups: list[ConsumerGroup]
    curve: CurveCredentials
    token: TokenCredentials | None = Field(None, description="the token link, where the buffer offers one")


class StreamInfo(BaseModel):
    id: uuid.UUID
    owner: str
    experiment: str
    runs: list[int]
    detectors: list[str]
    state: StreamStateName
    reason: str
    created_at: dt.datetime
    updated_at: dt.datetime
    starting_at: dt.datetime | None
    streaming_at: dt.datetime | None
    finished_at: dt.datetime | None
    job_backend: str
    job_id: str | None
    data_endpoint: DataEndpoint
    credential_expires_at: dt.datetime | None
    estimated_end_at: dt.datetime
    spec: dict[str, Any] = Field(description="the request as accepted")


class EndInfo(Strict):
    reason: Literal["completed", "failed", "cancelled"]
    error: str = Field("", max_length=10_000)
    events_sent: int = Field(0, ge=0, le=2**53 - 1)
    counts: dict[str, Annotated[int, Field(ge=0, le=2**53 - 1)]] = Field(default_factory=dict, max_length=64)


class ReportBody(Strict):
    """A job's progress report (POST /v1/internal/streams/{id}/report, HMAC-signed; see photonstream.reporting)."""

    seq: int = Field(ge=1, le=2**63 - 1, description="increases with every report of the stream (replays refused)")
    address: str = Field("", max_length=200, description="the run's buffer address ('' before the buffer acked)")
    phase: Literal["starting", "streaming", "ended"]
    events_read: int = Field(0, ge=0, le=2**53 - 1)
    events_sent: int = Field(0, ge=0, le=2**53 - 1)
    messages_sent: int = Field(0, ge=0, le=2**53 - 1)
    bytes_sent: int = Field(0, ge=0, le=2**53 - 1)
    messages_acked: int = Field(0, ge=0, le=2**53 - 1)
    bytes_acked: int = Field(0, ge=0, le=2**53 - 1)
    data_acked: int = Field(0, ge=0, le=2**53 - 1)
    expected_events: int | None = Field(None, ge=0, le=2**53 - 1)
    elapsed_s: float = Field(0.0, ge=0, le=1e9)
    events_per_s: float = Field(0.0, ge=0, le=1e12)
    mb_per_s: float = Field(0.0, ge=0, le=1e12)
    end: EndInfo | None = None


class ReportAccepted(BaseModel):
    accepted: bool
    state: StreamStateName


class RunProgress(BaseModel):
    """The newest progress report of one run of a stream."""

    address: str
    phase: str
    end_reason: str | None
    updated_at: dt.datetime
    report: dict[str, Any]


class ResultInfo(BaseModel):
    """A typed result a consumer published (photonstream.client.results), with its provenance."""

    id: int
    stream_id: uuid.UUID
    address: str
    kind: str
    group: str
    worker: str
    first_frame: int | None
    last_frame: int | None
    published_at: dt.datetime
    received_at: dt.datetime
    publisher: str = Field(description="the buffer credential that published it (curve:KEY or token:USER)")
    data: dict[str, Any]


class ResultPage(BaseModel):
    items: list[ResultInfo]
    next_after: int | None = Field(description="pass as 'after' for the next page (None: no more now)")


class StreamPage(BaseModel):
    items: list[StreamInfo]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class StreamTransitionInfo(BaseModel):
    id: int
    at: dt.datetime
    from_state: StreamStateName | None
    to_state: StreamStateName
    reason: str


class StreamLogs(BaseModel):
    stream_id: uuid.UUID
    text: str
    lines: int
    bytes: int


class DatasetInfo(BaseModel):
    experiment: str
    run: int
    detectors: list[str]
    size_bytes: int
    events: int | None


class DatasetList(BaseModel):
    items: list[DatasetInfo]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    schema_revision: str | None
    version: str
    auth_modes: list[str]
    checks: dict[str, str] = Field(
        default_factory=dict, description="each check by name (database, schema, crl): 'ok' or what is wrong"
    )


class ErrorBody(BaseModel):
    detail: str
    request_id: str | None = None


class FieldError(BaseModel):
    loc: list[str | int]
    field: str
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[FieldError]
    request_id: str | None = None


class LifetimeErrorBody(BaseModel):
    detail: str
    credential_expires_at: dt.datetime
    estimated_end_at: dt.datetime
    request_id: str | None = None


# --- admin ---------------------------------------------------------------------------------------------------


class Grant(Strict):
    subject_kind: Literal["identity", "group"]
    subject: str = Field(pattern=IDENTITY)
    experiment: str = Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$", description="'*': every experiment")


class RoleBindingBody(Strict):
    subject_kind: Literal["identity", "group"]
    subject: str = Field(pattern=IDENTITY)
    role: Literal["user", "operator", "admin"]


class Membership(Strict):
    group: str = Field(pattern=NAME)
    identity: str = Field(pattern=IDENTITY)


class IdentityState(Strict):
    identity: str = Field(pattern=IDENTITY)
    disabled: bool


class Revocation(Strict):
    kind: Literal["certificate", "token"]
    credential_id: str = Field(
        pattern=r"^[A-Za-z0-9:._-]{1,128}$", description="certificate serial (hex) or token id (jti)"
    )
    reason: str = Field("", max_length=1000)


class RevocationInfo(BaseModel):
    kind: str
    credential_id: str
    revoked_at: dt.datetime
    revoked_by: str
    reason: str


class DatasetBody(Strict):
    experiment: str = Field(pattern=NAME)
    run: int = Field(ge=0, le=10**9)
    detectors: list[str] = Field(default_factory=list, max_length=64)
    size_bytes: int = Field(0, ge=0, le=2**53 - 1)  # bounds a JSON number holds exactly
    events: int | None = Field(None, ge=0, le=2**53 - 1)


class PolicySnapshot(BaseModel):
    grants: list[dict[str, Any]]
    roles: list[dict[str, Any]]
    members: list[dict[str, Any]]
    identities: list[dict[str, Any]]


class AuditEntryInfo(BaseModel):
    id: int
    at: dt.datetime
    request_id: str
    identity: str
    action: str
    object: str
    outcome: str
    detail: str


class Changed(BaseModel):
    changed: bool


class Me(BaseModel):
    identity: str
    groups: list[str]
    experiments: list[str]
    roles: list[str]
    credential: str
    credential_expires_at: dt.datetime | None


# --- elastic worker pools ------------------------------------------------------------------------------------


class PoolEventInfo(BaseModel):
    """One decision of a pool: start-worker, scale-up, scale-down, replace, worker-ended, lag-unknown, lag-back,
    give-up, error, stream-drained, stopped (its workers ended or were cancelled), interrupted (the API stopped)."""

    id: int
    pool: str
    at: dt.datetime
    action: str
    workers: int = Field(description="live workers after the decision")
    lag: int | None = Field(description="the group's unfinished messages the decision saw (None: unknown)")
    members: int | None = Field(description="members of the group the buffer saw")
    detail: str
    jobs: list[str] = Field(description="backend job ids this decision started or cancelled")


class PoolStatus(BaseModel):
    name: str
    group: str
    kind: str
    min_workers: int
    max_workers: int
    target_lag: int
    state: Literal["waiting", "running", "stopped", "interrupted"] = Field(
        description="waiting: not started yet (the stream is not streaming); interrupted: the API stopped it"
    )
    workers: int = Field(description="live workers as of the newest decision")
    lag: int | None
    last_action: str | None
    live_jobs: list[str] = Field(description="job ids of the live workers (when this API process runs the pool)")


class StreamPools(BaseModel):
    stream_id: uuid.UUID
    pools: list[PoolStatus]
    events: list[PoolEventInfo]
    next_after: int | None = Field(description="pass as 'after' for more events (None: no more now)")


class WorkerKindInfo(BaseModel):
    name: str
    description: str
    options: dict[str, dict[str, Any]] = Field(description="option name → pattern, default, description")
    roles: list[str] | None = Field(description="roles that may run it (None: anyone granted the data)")
