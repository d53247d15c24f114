"""The buffer service's settings: where it binds, where it keeps data, its budgets, security and quotas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from photonstream.buffer.credentials import Security
from photonstream.config.base import one_line
from photonstream.errors import ConfigError

MB = 1 << 20
GB = 1 << 30


class BufferSettings(BaseModel):
    """How the buffer binds, where it keeps data, and its budgets (bytes and seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = Field("tcp://127.0.0.1:5600", description="ZeroMQ endpoint to bind (tcp://HOST:PORT, port * = any)")
    data_dir: Path | None = Field(None, description="where durable streams and spilled data go (None: memory only)")
    memory_per_stream: int = Field(1 * GB, ge=1, description="bytes of payload one stream may hold in memory")
    memory_total: int = Field(4 * GB, ge=1, description="bytes of payload all streams together may hold in memory")
    disk_per_stream: int | None = Field(None, ge=1, description="bytes one stream may hold on disk (None: no limit)")
    disk_total: int | None = Field(None, ge=1, description="bytes all streams may hold on disk (None: no limit)")
    retention_bytes: int | None = Field(
        None, ge=1, description="keep at most this many bytes per stream, oldest dropped first (None: no limit)"
    )
    retention_s: float | None = Field(None, gt=0, description="seconds a message is kept at most (None: no age limit)")
    spill: bool = Field(True, description="spill a full memory log to data_dir instead of dropping or blocking")
    segment_bytes: int = Field(256 * MB, ge=4096, description="bytes at which a new segment file is started")
    max_message_bytes: int = Field(
        1 * GB, ge=1, description="bytes one producer message may have; larger ones are refused"
    )
    ack_timeout_s: float = Field(
        30.0, gt=0, description="lossless groups: seconds before a message not acked is redelivered"
    )
    member_timeout_s: float = Field(10.0, gt=0, description="seconds a silent consumer stays a member of its group")
    fsync: bool = Field(False, description="fsync durable data every second (power-loss safety; slower)")
    io_threads: int = Field(2, ge=1, le=16, description="libzmq I/O threads (more for many connections or >10 Gb/s)")
    security: Security = Field(
        "none",
        description="security of 'bind': curve (authenticated and encrypted), token (authenticated, plaintext: "
        "inside one facility only) or none (no authentication: test/demo only)",
    )
    token_bind: str | None = Field(
        None, description="endpoint of a second listener with token security, ZAP PLAIN (None: none)"
    )
    keys_dir: Path | None = Field(
        None, description="buffer.key_secret (CURVE server pair, created if missing) and admins/*.key (admin keys)"
    )
    admin_keys: tuple[str, ...] = Field((), description="Z85 public keys of admins besides those in keys_dir/admins")
    max_groups_per_stream: int = Field(64, ge=1, description="consumer groups one stream may have (quota)")
    max_members_per_group: int = Field(256, ge=1, description="members one consumer group may have at once (quota)")
    results_kept: int = Field(
        100_000, ge=1, description="consumer results kept until the API collects them (oldest dropped beyond)"
    )

    @model_validator(mode="after")
    def _keys_for_curve(self) -> BufferSettings:
        if self.security == "curve" and self.keys_dir is None:
            raise ValueError("security curve needs keys_dir (where the buffer's key pair is kept)")
        return self

    @property
    def listeners(self) -> list[tuple[str, Security]]:
        """(endpoint to bind, security) of every listener; the first is ``bind``."""
        found: list[tuple[str, Security]] = [(self.bind, self.security)]
        if self.token_bind is not None:
            found.append((self.token_bind, "token"))
        return found

    @property
    def secured(self) -> bool:
        return any(security != "none" for _, security in self.listeners)

    @classmethod
    def build(cls, **values: Any) -> BufferSettings:
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(one_line(exc, prefix="buffer")) from None
