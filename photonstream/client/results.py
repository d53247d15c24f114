"""Typed results from consumers back to the API: ``publish(...)``, ``ResultPublisher``, ``Subscription.publish_result``.

A consumer (an indexer, a TOF analysis, a training loop) publishes what it found about a stream: its kind, the
fields of that kind, and provenance (stream address, consumer group, worker, frame range). The result travels over
the consumer's own authenticated buffer connection (command ``RES``: the buffer checks that the credential may read
that stream, keeps the result and acks it); the API collects results from the buffer, stores them and serves them
at ``GET /v1/streams/{id}/results`` and as ``result`` events on ``/v1/streams/{id}/events``.

    with ResultPublisher.from_stream_info("stream.json", group="indexers", worker="w1") as results:
        results.publish("indexing_rate", {"frames": 1000, "indexed": 412})

Kinds and their fields (checked before sending; ``custom`` takes any JSON-like map):
``hit_rate`` (frames, hits[, rate]), ``indexing_rate`` (frames, indexed[, hits, rate]), ``unit_cell`` (a, b, c,
alpha, beta, gamma[, std, count, lattice]), ``tof_histogram`` (quantity, edges, counts[, peaks]),
``training_loss`` (step, loss[, epoch, learning_rate, samples]), ``merging`` (the merger's shell table, see
``MergingStatistics``), ``structure`` (a structure-stage update: R factors, peaks, a map section).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, get_args

import msgpack
import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import Credentials, HandshakeWatch, Security
from photonstream.config.base import one_line
from photonstream.errors import ConfigError

MAX_RESULT_BYTES = 1 << 20


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HitRate(_Result):
    frames: int = Field(ge=0, description="frames looked at")
    hits: int = Field(ge=0, description="frames found to be hits")
    rate: float | None = Field(None, ge=0, le=1, description="hits / frames (computed when unset)")

    @model_validator(mode="after")
    def _rate(self) -> HitRate:
        if self.hits > self.frames:
            raise ValueError("hits cannot exceed frames")
        if self.rate is None and self.frames:
            object.__setattr__(self, "rate", self.hits / self.frames)
        return self


class IndexingRate(_Result):
    frames: int = Field(ge=0, description="frames (hits) the indexer tried")
    indexed: int = Field(ge=0, description="frames it indexed")
    hits: int | None = Field(None, ge=0, description="hits found, when known")
    rate: float | None = Field(None, ge=0, le=1, description="indexed / frames (computed when unset)")

    @model_validator(mode="after")
    def _rate(self) -> IndexingRate:
        if self.indexed > self.frames:
            raise ValueError("indexed cannot exceed frames")
        if self.rate is None and self.frames:
            object.__setattr__(self, "rate", self.indexed / self.frames)
        return self


class UnitCellResult(_Result):
    a: float = Field(gt=0, description="Å")
    b: float = Field(gt=0, description="Å")
    c: float = Field(gt=0, description="Å")
    alpha: float = Field(gt=0, lt=180, description="degrees")
    beta: float = Field(gt=0, lt=180, description="degrees")
    gamma: float = Field(gt=0, lt=180, description="degrees")
    std: list[float] | None = Field(None, min_length=6, max_length=6, description="spread of a, b, c, α, β, γ")
    count: int | None = Field(None, ge=0, description="cells averaged")
    lattice: str | None = Field(None, max_length=32)


class TofHistogram(_Result):
    quantity: Literal["mq", "tof_ns"] = Field(description="what the bins are: m/q or time of flight (ns)")
    edges: list[float] = Field(min_length=2, max_length=20_001)
    counts: list[int] = Field(max_length=20_000)
    peaks: list[float] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _bins(self) -> TofHistogram:
        if len(self.edges) != len(self.counts) + 1:
            raise ValueError(f"edges ({len(self.edges)}) must be one more than counts ({len(self.counts)})")
        return self


class TrainingLoss(_Result):
    step: int = Field(ge=0)
    loss: float
    epoch: int | None = Field(None, ge=0)
    learning_rate: float | None = Field(None, ge=0)
    samples: int | None = Field(None, ge=0)


Cell = float | int | str | None


class MergingStatistics(_Result):
    """The merger's shell table (``xtal.statistics``): per resolution shell and overall, with the resolution
    estimate, the curves against indexed frames and the 'data enough?' readout."""

    frames: int = Field(ge=0)
    indexed: int = Field(ge=0)
    shells: list[dict[str, Cell]] = Field(max_length=100)
    overall: dict[str, Cell]
    resolution: dict[str, Cell]
    curves: list[dict[str, Cell]] = Field(default_factory=list, max_length=1000)
    data_enough: dict[str, Cell | dict[str, Cell]] | None = None


class Peak(_Result):
    sign: Literal["+", "-"]
    height_sigma: float
    xyz: list[float] = Field(min_length=3, max_length=3)
    residue: str = Field(max_length=64)
    atom: str = Field(max_length=96)
    distance_a: float = Field(ge=0)


class MapSection(_Result):
    map: str = Field(max_length=32)
    centre: list[float] = Field(min_length=3, max_length=3)
    step_a: float = Field(gt=0)
    size: int = Field(ge=1, le=129)
    values: list[list[float]] = Field(max_length=129)
    density: list[list[float]] = Field(max_length=129)


StructureFile = Literal["structure.mtz", "2mFo-DFc.ccp4", "mFo-DFc.ccp4", "light-dark.ccp4", "structure.json"]
STRUCTURE_FILES: tuple[str, ...] = get_args(StructureFile)
"""The files a structure stage writes (and the API serves from the stream's artifacts folder), no others."""


class RefinementPoint(_Result):
    """One update of the structure stage, as its history keeps it."""

    update: int = Field(ge=1)
    at_s: float = Field(ge=0)
    frames: int = Field(ge=0)
    indexed: int = Field(ge=0)
    r_work: float = Field(ge=0)
    r_free: float = Field(ge=0)
    seconds: float = Field(ge=0)


class StructureUpdate(_Result):
    """One update of the structure stage (``consumers.structure``): R factors, the strongest peaks, a map section
    around the first of them, the files written."""

    update: int = Field(ge=1)
    at_s: float = Field(ge=0)
    frames: int = Field(ge=0)
    indexed: int = Field(ge=0)
    r_work: float = Field(ge=0)
    r_free: float = Field(ge=0)
    r_work_start: float | None = Field(None, ge=0)
    r_free_start: float | None = Field(None, ge=0)
    reflections: int = Field(ge=0)
    free_reflections: int = Field(ge=0)
    d_min: float = Field(gt=0)
    seconds: float = Field(ge=0)
    final: bool = False
    model: str = Field(max_length=256)
    pump_probe: bool = False
    peak_map: str = Field(max_length=32)
    peaks: list[Peak] = Field(default_factory=list, max_length=50)
    section: MapSection | None = None
    files: list[StructureFile] = Field(default_factory=list, max_length=len(STRUCTURE_FILES))
    history: list[RefinementPoint] = Field(default_factory=list, max_length=500)
    steps: list[str] = Field(default_factory=list, max_length=10)
    k_sol: float | None = None
    b_sol: float | None = None
    light_dark_scale: float | None = None


class Custom(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


RESULT_KINDS: dict[str, type[BaseModel]] = {
    "hit_rate": HitRate,
    "indexing_rate": IndexingRate,
    "unit_cell": UnitCellResult,
    "tof_histogram": TofHistogram,
    "training_loss": TrainingLoss,
    "merging": MergingStatistics,
    "structure": StructureUpdate,
    "custom": Custom,
}


def check_result(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The result's fields as the kind defines them; ConfigError (one line) when they do not fit."""
    model = RESULT_KINDS.get(kind)
    if model is None:
        raise ConfigError(f"result kind {kind!r} is not one of {', '.join(RESULT_KINDS)}")
    if not isinstance(data, dict):
        raise ConfigError(f"result {kind}: fields must be a map, not {type(data).__name__}")
    try:
        checked = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, prefix=f"result {kind}")) from None
    return checked.model_dump(mode="json", exclude_none=True)


def encode_result(
    stream: str,
    kind: str,
    data: dict[str, Any],
    *,
    group: str = "",
    worker: str = "",
    frames: tuple[int, int] | None = None,
    n: int = 0,
) -> tuple[dict[str, Any], bytes]:
    """(RES header, payload) for one result."""
    fields = check_result(kind, data)
    payload = msgpack.packb(fields, use_bin_type=True)
    if len(payload) > MAX_RESULT_BYTES:
        raise ConfigError(f"result {kind}: {len(payload)} bytes encoded, more than the limit of {MAX_RESULT_BYTES}")
    header: dict[str, Any] = {"s": stream, "t": kind, "g": group, "w": worker, "n": n}
    if frames is not None:
        first, last = (int(frames[0]), int(frames[1]))
        if first < 0 or last < first:
            raise ConfigError(f"result {kind}: frames must be (first, last) with 0 <= first <= last")
        header["f"] = [first, last]
    return header, payload


def decode_result(item: dict[str, Any]) -> dict[str, Any]:
    """A result as the buffer keeps it (``RESULTS`` reply) → a plain dict with its fields checked again."""
    fields = msgpack.unpackb(item["d"], raw=False) if isinstance(item.get("d"), bytes) else item.get("d")
    kind = str(item.get("t", "custom"))
    frames = item.get("f")
    return {
        "buffer_id": int(item["id"]),
        "address": str(item["s"]),
        "kind": kind,
        "group": str(item.get("g", "")),
        "worker": str(item.get("w", "")),
        "first_frame": int(frames[0]) if frames else None,
        "last_frame": int(frames[1]) if frames else None,
        "published_at": float(item.get("at", time.time())),
        "publisher": str(item.get("by", "")),
        "data": check_result(kind, fields if isinstance(fields, dict) else {}),
    }


class ResultPublisher:
    """Publishes results of one stream over a connection of its own; each ``publish`` waits for the buffer's ack."""

    def __init__(
        self,
        endpoint: str,
        stream: str,
        credentials: Credentials | None = None,
        *,
        group: str = "",
        worker: str = "",
        timeout_s: float = 10.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.group = group
        self.worker = worker
        self.timeout_s = timeout_s
        self.published = 0
        self._n = 0
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._watch: HandshakeWatch | None = None
        if credentials is not None:
            credentials.apply(self._socket)
        self._watch = HandshakeWatch(self._socket, endpoint)
        self._socket.connect(endpoint)

    @classmethod
    def from_stream_info(
        cls,
        info: str | Path | dict[str, Any],
        *,
        run: int | None = None,
        security: Security | None = None,
        **options: Any,
    ) -> ResultPublisher:
        """From a create response (or the file ``photonstream request create --save`` wrote): its buffer,
        credentials, and the stream address of ``run`` (default: the first run)."""
        if not isinstance(info, dict):
            try:
                info = json.loads(Path(info).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{info}: cannot read the stream's create response ({exc})") from None
        assert isinstance(info, dict)
        endpoint = info.get("data_endpoint", info)
        address, credentials = Credentials.from_endpoint(endpoint, security)
        streams = list(endpoint.get("streams") or [])
        if not streams:
            raise ConfigError("data_endpoint.streams: the stream has no buffer address")
        stream = streams[0]
        if run is not None:
            matching = [s for s in streams if s.split("/")[1] == str(run)]
            if not matching:
                raise ConfigError(f"run: {run} is not one of the stream's runs")
            stream = matching[0]
        return cls(address, stream, credentials, **options)

    def publish(self, kind: str, data: dict[str, Any], *, frames: tuple[int, int] | None = None) -> int:
        """Send one result and wait for the buffer to take it; returns its id there."""
        self._n += 1
        header, payload = encode_result(self.stream, kind, data, group=self.group, worker=self.worker,
                                        frames=frames, n=self._n)  # fmt: skip
        from photonstream.client.subscription import AccessRefusedError, ConsumerError

        self._socket.send_multipart([P.envelope(P.RES, header), payload])
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._watch is not None and self._watch.check():
                raise ConsumerError(self._watch.refused)
            if not self._socket.poll(100):
                continue
            command, reply = P.open_envelope(self._socket.recv_multipart()[0])
            if command == P.RACK and reply.get("n") == self._n:
                self.published += 1
                return int(reply["id"])
            if command == P.ERR:
                message = f"buffer {self.endpoint}: {reply.get('m', 'refused the result')}"
                raise AccessRefusedError(message) if reply.get("c") == "forbidden" else ConsumerError(message)
        raise ConsumerError(f"buffer {self.endpoint}: no ack for a result within {self.timeout_s:g} s")

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._socket.close()

    def __enter__(self) -> ResultPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(
    endpoint: str,
    stream: str,
    kind: str,
    data: dict[str, Any],
    *,
    credentials: Credentials | None = None,
    group: str = "",
    worker: str = "",
    frames: tuple[int, int] | None = None,
    timeout_s: float = 10.0,
) -> int:
    """Publish one result (a connection for this one call); returns the buffer's id for it."""
    with ResultPublisher(endpoint, stream, credentials, group=group, worker=worker, timeout_s=timeout_s) as pub:
        return pub.publish(kind, data, frames=frames)
