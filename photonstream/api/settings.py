"""Settings of the API service (one pydantic model; ``photonstream serve`` fills it from its options or a YAML file)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from photonstream.api.worker_kinds import WorkerKind
from photonstream.buffer.credentials import Security
from photonstream.config.base import one_line
from photonstream.errors import ConfigError
from photonstream.transport.sockets import check_endpoint

CertificateMode = Literal["off", "optional", "required"]
BufferMode = Literal["embedded", "external"]
MB, GB = 1 << 20, 1 << 30


def host_cores() -> int:
    return os.cpu_count() or 1


def host_memory_mb() -> int:
    try:
        return max(1, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MB)
    except (ValueError, OSError):  # no sysconf name on this platform
        return 4096


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(Path("photonstream-state"), description="database file, job state, stream workdirs")
    database_url: str | None = Field(None, description="SQLAlchemy URL (default: SQLite file in state_dir)")
    database_schema: str | None = Field(None, description="PostgreSQL schema for every table")
    migrate_on_startup: bool = Field(True, description="apply alembic migrations when the app starts")

    ca_dir: Path | None = Field(None, description="our CA directory: ca.crt, crl.pem, token.jwks.json")
    client_certificates: CertificateMode = Field(
        "optional", description="mutual TLS: off, optional (certificate or token), required (always a certificate)"
    )
    tokens: bool = Field(True, description="accept bearer tokens (with certificates required: as well, not instead)")
    token_issuer: str = Field("photonstream", description="iss of our own tokens")
    token_audience: str = Field("photonstream-api", description="aud every token must carry")
    oidc_jwks_url: str | None = Field(None, description="JWKS of an external OIDC issuer")
    oidc_issuer: str | None = Field(None, description="iss of the external issuer's tokens")
    oidc_audience: str | None = Field(None, description="aud for external tokens (default: token_audience)")
    oidc_identity_claim: str = Field("sub", description="claim naming the identity in external tokens")
    admins: list[str] = Field(default_factory=list, description="identities that are admins whatever the policy says")

    job_backend: str = Field("local", description="default job backend: local | slurm | sfapi")
    job_backends: list[str] = Field(default_factory=lambda: ["local"], description="backends requests may name")
    local_max_concurrent: int | None = Field(None, ge=1, description="local backend: jobs running at once")
    sfapi: dict[str, Any] = Field(default_factory=dict, description="SfApiBackend arguments (client_id, ...)")
    run_command: list[str] = Field(
        default_factory=lambda: [sys.executable, "-m", "photonstream"],
        min_length=1,
        description="how a job starts photonstream (then: run PIPELINE.yaml)",
    )
    launcher: bool = Field(True, description="launch queued streams and follow their jobs in this process")
    launcher_interval_s: float = Field(1.0, gt=0, description="how often the launcher looks at active streams")
    launch_timeout_s: float = Field(300.0, gt=0, description="a stream starting this long without a job fails")

    buffer: BufferMode = Field(
        "embedded",
        description="embedded: run the buffer in this process; external: use a 'photonstream buffer serve' at "
        "buffer_endpoint (giving buffer_endpoint alone means external)",
    )
    buffer_endpoint: str = Field(
        "tcp://127.0.0.1:5600", description="the buffer's main (CURVE) endpoint as jobs and consumers reach it"
    )
    buffer_advertised_endpoint: str | None = Field(
        None,
        description="the buffer's main endpoint as consumers reach it, given to them in each stream's data_endpoint "
        "when it differs from buffer_endpoint (a gateway or NAT in front of the buffer, consumers at another site); "
        "jobs and the API itself keep using buffer_endpoint. None: buffer_endpoint",
    )
    buffer_token_endpoint: str | None = Field(
        None, description="the buffer's token (ZAP PLAIN) endpoint as clients reach it (embedded: its bind)"
    )
    buffer_public_key: str | None = Field(
        None, description="the buffer's CURVE public key (Z85; default: buffer.key in buffer_keys_dir)"
    )
    buffer_security: Security | None = Field(
        None,
        description="the jobs' link to the buffer: curve, token (plaintext, inside one facility) or none "
        "(embedded test/demo only); default curve, or none for an external buffer without a known key",
    )
    buffer_keys_dir: Path | None = Field(
        None,
        description="buffer.key(_secret) (the buffer's pair), api.key_secret and admins/api.key (the API's control "
        "key); default state_dir/buffer-keys. Share it with an external 'buffer serve --keys-dir'",
    )
    buffer_bind: str = Field("tcp://127.0.0.1:5600", description="embedded buffer: its main (CURVE) listener")
    buffer_token_bind: str | None = Field(
        "tcp://127.0.0.1:5601", description="embedded buffer: its token listener (None: no token link)"
    )
    buffer_data_dir: Path | None = Field(None, description="embedded buffer: spill and durable data (state_dir/buffer)")
    buffer_isolation: Literal["process", "thread"] = Field(
        "process",
        description="embedded buffer: in a supervised child process (its crash leaves the API up, and it is started "
        "again) or in a thread of the API (tests that look inside it only)",
    )
    buffer_options: dict[str, Any] = Field(
        default_factory=dict, description="embedded buffer: more BufferSettings (memory_total, retention_s, ...)"
    )
    buffer_grant_keep_s: float = Field(
        86400.0, gt=0, description="a finished stream's credentials still read its buffered data this long"
    )
    buffer_sync_s: float = Field(5.0, gt=0, description="how often the buffer's grants are re-sent (restarts)")
    results_poll_s: float = Field(1.0, gt=0, description="how often results are collected from the buffer")
    report_url: str | None = Field(
        None, description="base URL jobs send progress reports to, e.g. https://api.example:8443 (None: none)"
    )
    report_ca_file: Path | None = Field(None, description="CA file jobs verify the API with (default: ca_dir/ca.crt)")
    report_client_cert: Path | None = Field(
        None, description="client certificate (and report_client_key) for jobs when the API requires mutual TLS"
    )
    report_client_key: Path | None = Field(None, description="its private key")
    report_max_skew_s: float = Field(300.0, gt=0, description="reports signed longer ago (or ahead) are refused")
    stream_handlers: list[dict[str, Any]] | None = Field(
        None, description="handlers every stream gets (default: the buffer handler at buffer_endpoint)"
    )
    data_root: str | None = Field(
        None, description="template of the directory an experiment's files live in, e.g. /data/{experiment}"
    )
    allow_source_addresses: list[str] = Field(
        default_factory=list, description="network sources (stream2 address) streams may read from"
    )

    worker_kinds: dict[str, WorkerKind | None] = Field(
        default_factory=dict,
        description="worker kinds requests may run in elastic pools, on top of the built-in pull, xtal and tof "
        "(name: {command, options, roles}; null removes a built-in one); see photonstream.api.worker_kinds",
    )
    max_pool_workers_per_request: int = Field(
        16, ge=1, description="the sum of max_workers over a request's worker_pools (422 beyond)"
    )
    max_pool_workers_per_user: int | None = Field(
        32, ge=1, description="the sum of max_workers over one identity's active streams (429 beyond; None: no limit)"
    )
    pool_drain_timeout_s: float = Field(
        3600.0, gt=0, description="pools of a completed stream whose group has not drained this long are stopped"
    )
    pool_lease_s: float = Field(
        30.0,
        gt=0,
        description="the lease of the API process running the pools, renewed by its launcher's passes: another "
        "API process on the database takes the pools over once it expired (longer than launcher_interval_s)",
    )

    # limits on what one request, and one identity's active streams together, may ask of the job backend (422 for a
    # request over a per-request limit, 429 past a per-identity total); None turns one off. The defaults fit the
    # local backend (jobs on this host): raise them for a batch system
    max_ranks_per_request: int | None = Field(
        default_factory=host_cores, ge=1, description="resources.ranks of a request (default: this host's cores)"
    )
    max_cores_per_request: int | None = Field(
        default_factory=host_cores, ge=1, description="ranks × cores_per_rank of a request (default: this host's cores)"
    )
    max_memory_mb_per_request: int | None = Field(
        default_factory=host_memory_mb, ge=1, description="nodes × memory_mb of a request (default: this host's memory)"
    )
    max_time_limit_s_per_request: int | None = Field(
        86400, ge=1, description="resources.time_limit_s of a request: how long its job may run"
    )
    max_ranks_per_user: int | None = Field(64, ge=1, description="ranks of one identity's active streams together")
    max_cores_per_user: int | None = Field(256, ge=1, description="cores of one identity's active streams together")
    max_memory_mb_per_user: int | None = Field(
        default_factory=lambda: 4 * host_memory_mb(),
        ge=1,
        description="memory (MB) of one identity's active streams together (default: 4 × this host's memory)",
    )
    max_time_limit_s_per_user: int | None = Field(
        7 * 86400, ge=1, description="time limits (s) of one identity's active streams together"
    )
    max_events_per_request: int | None = Field(
        10_000_000, ge=1, description="events a request's source is asked to make, over all its runs"
    )
    max_frame_bytes: int | None = Field(
        256 * MB, ge=1, description="bytes of one frame of the requested source (detector shape × dtype)"
    )
    buffer_disk_per_stream: int | None = Field(
        32 * GB, ge=1, description="embedded buffer: bytes one stream may hold on disk (its disk_per_stream)"
    )
    buffer_disk_total: int | None = Field(
        128 * GB, ge=1, description="embedded buffer: bytes all streams may hold on disk (its disk_total)"
    )

    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies are refused (413)")
    max_active_streams_per_user: int | None = Field(
        20,
        ge=1,
        description="queued, starting and streaming streams one identity may have (429 beyond; None: no limit)",
    )
    max_event_connections_per_user: int | None = Field(
        8, ge=1, description="server-sent-event connections one identity may hold open (429 beyond; None: no limit)"
    )
    page_limit_max: int = Field(500, ge=1)
    events_poll_s: float = Field(0.5, gt=0, description="how often /events looks for new transitions")

    @model_validator(mode="after")
    def _consistent(self) -> ApiSettings:
        if self.job_backend not in self.job_backends:
            raise ValueError(f"job_backend {self.job_backend!r} must be one of job_backends {self.job_backends}")
        if self.oidc_jwks_url and not self.oidc_issuer:
            raise ValueError("oidc_issuer is needed with oidc_jwks_url")
        if self.pool_lease_s <= 2 * self.launcher_interval_s:
            raise ValueError(
                f"pool_lease_s ({self.pool_lease_s:g}) must exceed two launcher passes "
                f"(launcher_interval_s {self.launcher_interval_s:g}): the owner renews it on each pass"
            )
        if self.client_certificates == "off" and not self.tokens:
            raise ValueError("client_certificates is off and tokens are off: nobody could authenticate")
        if "buffer_endpoint" in self.model_fields_set and "buffer" not in self.model_fields_set:
            self.buffer = "external"
        if self.buffer_security == "token" and self.buffer == "embedded" and self.buffer_token_bind is None:
            raise ValueError("buffer_security token needs buffer_token_bind (the embedded buffer's token listener)")
        if self.buffer_security == "none" and self.buffer == "external" and self.buffer_public_key:
            raise ValueError("buffer_security none with a buffer_public_key: the buffer authenticates, use curve")
        for key, field in (("disk_per_stream", "buffer_disk_per_stream"), ("disk_total", "buffer_disk_total")):
            given = self.buffer_options.get(key, getattr(self, field))
            if field in self.model_fields_set and given != getattr(self, field):
                raise ValueError(f"{field} and buffer_options.{key} differ: give one of them")
            self.buffer_options[key] = given  # the embedded buffer's BufferSettings get it from buffer_options
        return self

    @field_validator("buffer_advertised_endpoint")
    @classmethod
    def _connectable(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("tcp://") or value.endswith(":*")):
            raise ValueError(f"{value!r}: consumers connect to it, so it must be tcp://HOST:PORT with a port number")
        return value if value is None else check_endpoint(value)

    @property
    def consumer_buffer_endpoint(self) -> str:
        """The buffer's main endpoint as a stream's consumers are told to reach it."""
        return self.buffer_advertised_endpoint or self.buffer_endpoint

    @property
    def resolved_buffer_keys_dir(self) -> Path:
        return self.buffer_keys_dir or self.state_dir / "buffer-keys"

    @property
    def auth_modes(self) -> list[str]:
        """'mtls' and/or 'token', as /v1/health reports them."""
        return (["mtls"] if self.client_certificates != "off" else []) + (["token"] if self.tokens else [])

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'photonstream.db').expanduser().resolve()}"

    @property
    def workdirs(self) -> Path:
        return self.state_dir / "streams"


def load_settings(path: str | Path | None = None, **overrides: Any) -> ApiSettings:
    """Settings from a YAML file (optional) with ``overrides`` on top; one-line ConfigError when invalid."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read settings ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: settings must be a mapping")
        raw.update(loaded)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ApiSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, prefix=str(path) if path else "settings")) from None
