"""The crystallography worker: frames in, one small result per frame out.

    from photonstream.client import subscribe
    run_xtal_worker(subscribe(endpoint, "exp/1/det", group="xtal"), "tcp://merger:5700")

Per frame: hit finding (or the upstream ``hitfinder`` step's verdict; a miss a ``veto`` step stripped of its image
is judged by that verdict alone), then for hits spot finding, spot positions → scattering vectors, indexing against the
known cell (from the start message's source details or ``XtalOptions.unit_cell``), summation integration and the
reduction of Miller indices to the asymmetric unit (cctbx). Each frame gives a ``result`` record
``{type, worker, event, hit, n_peaks, true_hit, indexed, n_spots, n_indexed, cell, orientation, reflections:
{hkl, I, sigma, scale}, seconds: {hit, spots, index, integrate}}`` (``scale``: the frame's k_f against the shared
reference, see ``scaling``; ``group``: "on"/"off" where the frame's metadata has ``laser``); the stream's start
and end give ``start`` and ``end`` records (the end carries this worker's counts and, if enabled, its virtual
powder pattern). Records go to a callable or, given an endpoint string, to a ZeroMQ PUSH socket connected to the
merger.

``messages`` is any iterator of photonstream messages: the buffer client's ``subscribe`` (every member of a
work-sharing group gets the start and end messages) or ``photonstream.consumers.pull.read_stream``. A zmq-push
stream shared by several PULL readers hands its start message to one of them only: there, pass ``start=``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field

from photonstream.consumers.xtal import _cctbx
from photonstream.consumers.xtal._wire import pack
from photonstream.consumers.xtal.indexing import IndexingSettings, KnownCellIndexer
from photonstream.consumers.xtal.integrate import IntegrationSettings, Integrator
from photonstream.consumers.xtal.powder import PowderAccumulator
from photonstream.consumers.xtal.scaling import scaler_for
from photonstream.consumers.xtal.spots import SpotFinderSettings, find_hit, find_spots
from photonstream.detector import DetectorModel
from photonstream.errors import ConfigError
from photonstream.frames import EndMessage, Frame, FrameBatch, Message, StartMessage
from photonstream.processing.hitfinder import HitfinderOptions
from photonstream.sources._crystal import UnitCell

ResultSink = Callable[[dict[str, Any]], None]


class XtalOptions(BaseModel):
    """What a crystallography worker does with each frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    array: str = Field("data", description="frame array holding the detector image (photons)")
    unit_cell: tuple[float, float, float, float, float, float] | None = Field(
        None, description="known cell a, b, c (Å), alpha, beta, gamma (°); default: the stream's source details"
    )
    space_group: str | None = Field(None, description="space group symbol, e.g. P43212; default: the source's")
    hit_min_peaks: int = Field(10, ge=1, description="a frame with at least this many peaks is a hit")
    hit_threshold: float = Field(2.0, ge=0.0, description="hit finder pixel threshold above the baseline")
    hit_min_snr: float = Field(5.0, ge=0.0, description="hit finder minimum peak signal-to-noise ratio")
    spot_threshold: float = Field(1.5, ge=0.0, description="spot finder pixel threshold above the background")
    spot_min_pixels: int = Field(2, ge=1, description="fewest pixels in a spot")
    spot_min_signal: float = Field(6.0, ge=0.0, description="least summed signal of a spot")
    indexing: Literal["pairs", "dps"] = Field(
        "pairs", description="pairs: known-cell vector-pair search (numpy); dps: cctbx rstbx FFT + force_cell"
    )
    tolerance: float = Field(0.25, gt=0.0, le=0.5, description="indexing tolerance, fraction of the shortest a*")
    min_indexed: int = Field(12, ge=3, description="fewest indexed spots for an indexing solution")
    min_indexed_fraction: float = Field(0.5, ge=0.0, le=1.0, description="and at least this fraction of spots")
    box_half: int = Field(2, ge=1, le=10, description="integration box half-width (pixels)")
    cutoff_sigmas: float = Field(1.0, gt=0.0, description="integrate reflections within this many rms of the sphere")
    powder_bins: int = Field(0, ge=0, description="bins of the virtual powder pattern of hits (0: none)")
    powder_every: int = Field(0, ge=0, description="send the powder pattern every N hits too (0: at the end)")
    reference_model: str | None = Field(
        None,
        max_length=4096,
        description="scale each frame to this atomic model's |F|² ('1aki' or a PDB/mmCIF file); default: the "
        "source's model where it names one, else a generic Wilson falloff (see xtal.scaling)",
    )


@dataclass
class WorkerSummary:
    worker: str
    frames: int = 0
    hits: int = 0
    indexed: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("hit", "spots", "index", "integrate"), 0.0)
    )


class XtalProcessor:
    """The per-frame work for one stream (built from its start message)."""

    def __init__(self, start: StartMessage, options: XtalOptions) -> None:
        self.options = options
        self.detector = DetectorModel.from_start(start)
        cell = options.unit_cell or start.source.get("unit_cell")
        space_group = options.space_group or start.source.get("space_group")
        if cell is None or space_group is None:
            raise ConfigError(
                f"stream {start.stream_id!r}: indexing needs the known unit_cell and space_group; the source "
                "does not report them, so set XtalOptions.unit_cell and space_group"
            )
        self.cell = UnitCell(*(float(v) for v in cell))
        self.space_group = str(space_group)
        self.hit_options = HitfinderOptions(
            array=options.array,
            algorithm="numpy",
            min_peaks=options.hit_min_peaks,
            threshold=options.hit_threshold,
            min_snr=options.hit_min_snr,
        )
        self.spot_settings = SpotFinderSettings(
            threshold=options.spot_threshold, min_pixels=options.spot_min_pixels, min_signal=options.spot_min_signal
        )
        self.indexer = KnownCellIndexer(
            self.cell,
            self.detector.wavelength_a,
            _cctbx.laue_rotations(self.space_group),
            IndexingSettings(
                method=options.indexing,
                tolerance=options.tolerance,
                min_indexed=options.min_indexed,
                min_fraction=options.min_indexed_fraction,
            ),
        )
        self.integrator = Integrator(
            self.detector,
            self.cell,
            IntegrationSettings(box_half=options.box_half, cutoff_sigmas=options.cutoff_sigmas),
        )
        self.powder = PowderAccumulator(self.detector, options.powder_bins) if options.powder_bins else None
        d_min = 1 / self.detector.max_resolution_q()
        self.scaler = scaler_for(options.reference_model, self.cell, d_min)

    def start_record(self, start: StartMessage) -> dict[str, Any]:
        return {
            "type": "start",
            "stream_id": start.stream_id,
            "source": start.source,
            "geometry": start.geometry.to_dict(),
            "unit_cell": list(self.cell.as_tuple()),
            "space_group": self.space_group,
            "wavelength_a": self.detector.wavelength_a,
            "scaling": self.scaler.describe(),
        }

    def process(self, frame: Frame) -> dict[str, Any]:
        """The result record of one frame."""
        modules = None
        if self.options.array in frame.arrays:  # absent on a frame a veto step stripped (a miss)
            modules = np.asarray(frame.array(self.options.array))
            modules = modules.reshape(self.detector.n_modules, *self.detector.module_shape)
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        verdict = find_hit(frame, modules, self.hit_options, self.options.array)
        seconds["hit"] = time.perf_counter() - clock
        true_hit = frame.metadata.get("true_hit")
        result: dict[str, Any] = {
            "type": "result",
            "event": frame.event,
            "hit": verdict.hit,
            "n_peaks": verdict.n_peaks,
            "true_hit": None if true_hit is None else bool(true_hit),
            "indexed": False,
            "n_spots": 0,
            "seconds": seconds,
        }
        laser = frame.metadata.get("laser")
        if laser is not None:  # a pump-probe run: the merger keeps laser-on and laser-off frames apart
            result["group"] = "on" if laser else "off"
        if not verdict.hit:
            return result
        if modules is None:
            raise ConfigError(
                f"xtal worker: event {frame.event} is a hit but has no array {self.options.array!r} to index "
                f"(it has: {', '.join(sorted(frame.arrays)) or 'none'})"
            )
        if self.powder is not None:
            self.powder.add(modules)
        clock = time.perf_counter()
        spots = find_spots(modules, self.spot_settings)
        seconds["spots"] = time.perf_counter() - clock
        result["n_spots"] = len(spots)
        clock = time.perf_counter()
        solution = self.indexer.index(self.detector.flat_to_q(spots[:, 0], spots[:, 1])) if len(spots) else None
        seconds["index"] = time.perf_counter() - clock
        if solution is None:
            return result
        clock = time.perf_counter()
        self.integrator.learn(solution.hkl[solution.indexed], solution.orientation)
        reflections = self.integrator.integrate(modules, solution.orientation)
        asu = _cctbx.map_to_asu(reflections.hkl, self.cell.as_tuple(), self.space_group)
        intensity = reflections.intensity.astype(np.float32)
        scale = self.scaler.scale(asu, intensity)
        seconds["integrate"] = time.perf_counter() - clock
        result.update(
            indexed=True,
            n_indexed=solution.n_indexed,
            cell=[round(v, 4) for v in solution.cell],
            orientation=solution.orientation,
            rmsd_q=solution.rmsd_q,
            reflections={"hkl": asu, "I": intensity, "sigma": reflections.sigma.astype(np.float32), "scale": scale},
        )
        return result


def zmq_sink(endpoint: str, context: zmq.Context | None = None) -> tuple[ResultSink, Callable[[], None]]:
    """A sink that PUSHes records to ``endpoint`` (the merger binds it), and the function that closes it."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 30_000)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.connect(endpoint)

    def send(record: dict[str, Any]) -> None:
        sock.send(pack(record))

    return send, sock.close


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_xtal_worker(
    messages: Iterable[Message],
    sink: ResultSink | str,
    options: XtalOptions | None = None,
    *,
    worker_id: str | None = None,
    start: StartMessage | None = None,
) -> WorkerSummary:
    """Process every frame of ``messages`` until the end message; returns what this worker did."""
    options = options or XtalOptions()
    summary = WorkerSummary(worker=worker_id or default_worker_id())
    close: Callable[[], None] | None = None
    if isinstance(sink, str):
        sink, close = zmq_sink(sink)
    emit: ResultSink = sink
    processor: XtalProcessor | None = None
    end: EndMessage | None = None

    def begin(message: StartMessage) -> XtalProcessor:
        built = XtalProcessor(message, options)
        emit({**built.start_record(message), "worker": summary.worker})
        return built

    error = ""
    try:
        if start is not None:
            processor = begin(start)
        for message in messages:
            if isinstance(message, StartMessage):
                if processor is None:
                    processor = begin(message)
            elif isinstance(message, Frame | FrameBatch):
                if processor is None:
                    raise ConfigError("xtal worker: a frame arrived before the start message (pass start=)")
                for frame in message.frames if isinstance(message, FrameBatch) else [message]:
                    _process(processor, frame, summary, emit, options)
            elif isinstance(message, EndMessage):
                end = message
                break
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # Always tell the merger this worker is done (with the error, if any), so it never waits in vain.
        record: dict[str, Any] = {
            "type": "end",
            "worker": summary.worker,
            "frames": summary.frames,
            "hits": summary.hits,
            "indexed": summary.indexed,
            "seconds": summary.seconds,
            "stream_end": None if end is None else {"reason": end.reason, "events_sent": end.events_sent},
            "error": error,
        }
        if processor is not None and processor.powder is not None:
            record["powder"] = processor.powder.take().to_dict()
        try:
            emit(record)
        finally:
            if close is not None:
                close()
    return summary


def _process(
    processor: XtalProcessor, frame: Frame, summary: WorkerSummary, emit: ResultSink, options: XtalOptions
) -> None:
    result = processor.process(frame)
    result["worker"] = summary.worker
    summary.frames += 1
    summary.hits += bool(result["hit"])
    summary.indexed += bool(result["indexed"])
    for stage, seconds in result["seconds"].items():
        summary.seconds[stage] += seconds
    emit(result)
    powder = processor.powder
    pending = 0 if powder is None or powder.pattern is None else powder.pattern.frames
    if powder is not None and options.powder_every and pending >= options.powder_every:
        emit({"type": "powder", "worker": summary.worker, "powder": powder.take().to_dict()})
