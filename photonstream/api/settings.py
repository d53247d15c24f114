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

    state_dir: Path = Field(
        Path("photonstream-state"),
        description="directory of the SQLite database (photonstream.db), the job backends' state (jobs/) and every "
        "stream's workdir (streams/); relative paths are from where the service starts",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the database, e.g. postgresql://user@db.example/photonstream (None: the SQLite "
        "file state_dir/photonstream.db)",
    )
    database_schema: str | None = Field(
        None, description="PostgreSQL schema that holds every table (None: the connection's default, usually public)"
    )
    migrate_on_startup: bool = Field(
        True,
        description="apply the database migrations at start-up (false: run 'photonstream db upgrade' first)",
    )

    ca_dir: Path | None = Field(
        None,
        description="our CA's directory ('photonstream ca init'): ca.crt and crl.pem check client certificates, "
        "token.jwks.json our own tokens (None: no client certificates; tokens only from oidc_jwks_url)",
    )
    client_certificates: CertificateMode = Field(
        "optional", description="mutual TLS: off, optional (certificate or token), required (always a certificate)"
    )
    tokens: bool = Field(True, description="accept bearer tokens (with certificates required: as well, not instead)")
    token_issuer: str = Field(
        "photonstream", description="the iss claim of the tokens 'photonstream ca issue-token' makes"
    )
    token_audience: str = Field(
        "photonstream-api", description="the aud claim every token must carry, ours and external ones"
    )
    oidc_jwks_url: str | None = Field(
        None, description="URL of an external OIDC issuer's JWKS (its signing keys; None: only our own tokens)"
    )
    oidc_issuer: str | None = Field(
        None, description="the iss claim of the external issuer's tokens (needed with oidc_jwks_url)"
    )
    oidc_audience: str | None = Field(
        None, description="the aud claim external tokens carry for us (None: token_audience)"
    )
    oidc_identity_claim: str = Field(
        "sub", description="the claim of an external token that names the identity grants and roles are given to"
    )
    admins: list[str] = Field(
        default_factory=list,
        description="identities (certificate CN or token identity) that are admins whatever the policy says",
    )

    job_backend: str = Field(
        "local",
        description="the backend a request that names none runs on: local, slurm or sfapi (one of job_backends)",
    )
    job_backends: list[str] = Field(
        default_factory=lambda: ["local"],
        json_schema_extra={"doc_default": '`["local"]`'},
        description="the backends requests may name (local, slurm, sfapi)",
    )
    local_max_concurrent: int | None = Field(
        None, ge=1, description="local backend: jobs running at once; more wait in its queue (None: no limit)"
    )
    sfapi: dict[str, Any] = Field(
        default_factory=dict,
        description="arguments of the NERSC Superfacility backend (SfApiBackend: client_id, private_key, ...)",
    )
    run_command: list[str] = Field(
        default_factory=lambda: [sys.executable, "-m", "photonstream"],
        json_schema_extra={"doc_default": '`[sys.executable, "-m", "photonstream"]`: this service\'s Python'},
        min_length=1,
        description="the argv that starts photonstream in a job, followed by run PIPELINE.yaml; on a batch system, "
        "give the Python (or photonstream) path as the compute nodes see it",
    )
    launcher: bool = Field(
        True,
        description="launch queued streams and follow their jobs in this process (false: another API process on the "
        "same database does it)",
    )
    launcher_interval_s: float = Field(
        1.0,
        gt=0,
        description="seconds between the launcher's passes over active streams (launches, job states, pool leases)",
    )
    launch_timeout_s: float = Field(
        300.0,
        gt=0,
        description="seconds a stream may be starting without a running job before it fails (a batch queue's wait "
        "counts)",
    )

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
    buffer_bind: str = Field(
        "tcp://127.0.0.1:5600",
        description="embedded buffer: the endpoint its main (CURVE) listener binds, tcp://HOST:PORT (port * = any)",
    )
    buffer_token_bind: str | None = Field(
        "tcp://127.0.0.1:5601",
        description="embedded buffer: the endpoint its token (ZAP PLAIN) listener binds (None: no token listener)",
    )
    buffer_data_dir: Path | None = Field(
        None, description="embedded buffer: directory of spilled and durable stream data (None: state_dir/buffer)"
    )
    buffer_isolation: Literal["process", "thread"] = Field(
        "process",
        description="embedded buffer: in a supervised child process (its crash leaves the API up, and it is started "
        "again) or in a thread of the API (tests that look inside it only)",
    )
    buffer_options: dict[str, Any] = Field(
        default_factory=dict, description="embedded buffer: more BufferSettings (memory_total, retention_s, ...)"
    )
    buffer_grant_keep_s: float = Field(
        86400.0,
        gt=0,
        description="seconds a finished stream's consumer credentials may still read its buffered data (1 day)",
    )
    buffer_sync_s: float = Field(
        5.0,
        gt=0,
        description="seconds between re-sending every grant to the buffer (a restarted buffer gets them back)",
    )
    results_poll_s: float = Field(
        1.0, gt=0, description="seconds between collections of the consumers' results from the buffer"
    )
    report_url: str | None = Field(
        None, description="base URL jobs send progress reports to, e.g. https://api.example:8443 (None: none)"
    )
    report_ca_file: Path | None = Field(
        None, description="CA file jobs verify the API's certificate with when they report (None: ca_dir/ca.crt)"
    )
    report_client_cert: Path | None = Field(
        None, description="client certificate (and report_client_key) for jobs when the API requires mutual TLS"
    )
    report_client_key: Path | None = Field(None, description="the private key (PEM) of report_client_cert")
    report_max_skew_s: float = Field(
        300.0,
        gt=0,
        description="seconds a job's signed report may be old (or ahead): clocks of the job's host and the API's "
        "must agree this well",
    )
    stream_handlers: list[dict[str, Any]] | None = Field(
        None,
        description="the pipeline handlers every stream's job gets, as in a pipeline YAML (None: the buffer handler "
        "at buffer_endpoint)",
    )
    data_root: str | None = Field(
        None,
        description="directory an experiment's files live in, {experiment} filled in, e.g. /data/{experiment}: "
        "file sources of a request must lie inside it (None: requests may not read files)",
    )
    allow_source_addresses: list[str] = Field(
        default_factory=list,
        description="addresses network sources (stream2 address) may read from; any other is refused",
    )

    worker_kinds: dict[str, WorkerKind | None] = Field(
        default_factory=dict,
        description="worker kinds requests may run in elastic pools, on top of the built-in pull, xtal, tof and "
        "structure (name: {command, options, roles}; null removes a built-in one); see photonstream.api.worker_kinds",
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
        default_factory=host_cores,
        ge=1,
        json_schema_extra={"doc_default": "this host's CPU cores"},
        description="resources.ranks of a request: MPI ranks of its job (422 beyond; None: no limit)",
    )
    max_cores_per_request: int | None = Field(
        default_factory=host_cores,
        ge=1,
        json_schema_extra={"doc_default": "this host's CPU cores"},
        description="ranks × cores_per_rank of a request: CPU cores its job takes (422 beyond; None: no limit)",
    )
    max_memory_mb_per_request: int | None = Field(
        default_factory=host_memory_mb,
        ge=1,
        json_schema_extra={"doc_default": "this host's memory in MB"},
        description="nodes × memory_mb of a request: memory (MB) its job takes (422 beyond; None: no limit)",
    )
    max_time_limit_s_per_request: int | None = Field(
        86400,
        ge=1,
        description="resources.time_limit_s of a request: seconds its job may run (422 beyond; None: no limit)",
    )
    max_ranks_per_user: int | None = Field(
        64, ge=1, description="ranks of one identity's active streams together (429 beyond; None: no limit)"
    )
    max_cores_per_user: int | None = Field(
        256, ge=1, description="cores of one identity's active streams together (429 beyond; None: no limit)"
    )
    max_memory_mb_per_user: int | None = Field(
        default_factory=lambda: 4 * host_memory_mb(),
        json_schema_extra={"doc_default": "4 × this host's memory in MB"},
        ge=1,
        description="memory (MB) of one identity's active streams together (429 beyond; None: no limit)",
    )
    max_time_limit_s_per_user: int | None = Field(
        7 * 86400,
        ge=1,
        description="time limits (s) of one identity's active streams together (429 beyond; None: no limit)",
    )
    max_events_per_request: int | None = Field(
        10_000_000,
        ge=1,
        description="events a request's source is asked to make, over all its runs (422 beyond; None: no limit)",
    )
    max_frame_bytes: int | None = Field(
        256 * MB,
        ge=1,
        description="bytes of one frame of the requested source, detector shape × dtype (422 beyond; None: no limit)",
    )
    buffer_disk_per_stream: int | None = Field(
        32 * GB,
        ge=1,
        description="embedded buffer: bytes one stream may hold on disk, its disk_per_stream (None: no limit)",
    )
    buffer_disk_total: int | None = Field(
        128 * GB,
        ge=1,
        description="embedded buffer: bytes all streams may hold on disk, its disk_total (None: no limit)",
    )

    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="bytes a request body may have; larger ones are refused (413)"
    )
    max_active_streams_per_user: int | None = Field(
        20,
        ge=1,
        description="queued, starting and streaming streams one identity may have (429 beyond; None: no limit)",
    )
    max_event_connections_per_user: int | None = Field(
        8, ge=1, description="server-sent-event connections one identity may hold open (429 beyond; None: no limit)"
    )
    page_limit_max: int = Field(500, ge=1, description="most streams one page of GET /v1/streams holds (its limit)")
    events_poll_s: float = Field(
        0.5, gt=0, description="seconds between looks for new state transitions by an open events feed (/events)"
    )

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

    def artifacts(self, stream_id: str, workdir: str | None = None) -> Path:
        """A stream's folder for what its workers write for the API to serve (a worker kind's {artifacts})."""
        return Path(workdir or self.workdirs / stream_id) / "artifacts"


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
