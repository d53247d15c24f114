"""``psana``: LCLS-II XTC2 runs read through SLAC's psana (``pip install "photonstream[psana]"``).

Either name the files (offline; each file is one run) or the experiment layout psana itself uses::

    source: {type: psana, files: [run1.xtc2], detector: jungfrau}
    source: {type: psana, exp: tstx00117, run: 1, dir: /data/tstx00117/xtc, detector: jungfrau,
             fields: {data: raw, photon_energy: "ebeam:raw.ebeamPhotonEnergy"}}

``fields`` maps our names to psana calls: ``raw`` means ``det.raw.raw(evt)``, ``xtc1dump.image`` means
``det.xtc1dump.image(evt)``, ``tof:xtc1dump.waveform`` reads another detector. Arrays come out exactly as psana
returns them (same dtype; read-only views unless ``copy_arrays``); scalars and strings go into the frame's metadata.
Files are checked without psana first (see ``_xtc2``): psana kills the process on some non-XTC2 input.
Calibration constants are not fetched unless ``load_calibration`` is set (that needs SLAC's database).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from photonstream._data_root import outside_data_root
from photonstream.config.base import PluginOptions
from photonstream.config.environment import PSANA_DATA_ENV
from photonstream.errors import MissingDependencyError, SourceError
from photonstream.frames import Frame, Geometry
from photonstream.sources._psana_access import bind_accessors, offline_run_datasource, parse_accessor
from photonstream.sources._xtc2 import NotXtc2Error, Xtc2Scan, scan_xtc2, to_unix_seconds
from photonstream.sources.base import Shard, SourceInfo, registry

log = logging.getLogger(__name__)

RESERVED_METADATA = frozenset({"psana_timestamp", "psana_run"})


class PsanaOptions(PluginOptions):
    type: Literal["psana"] = "psana"
    files: list[str] = Field(default_factory=list, description="XTC2 file(s), read in order; each is one run")
    exp: str | None = Field(None, description="experiment name, e.g. tstx00117 (with run; instead of files)")
    run: int | None = Field(None, ge=0, description="run number within exp")
    dir: str | None = Field(
        None, description="the run's xtc directory (holds smalldata/); default: $SIT_PSDM_DATA/<ins>/<exp>/xtc"
    )
    detector: str = Field(min_length=1, description="detector name as psana knows it, e.g. jungfrau")
    fields: dict[str, str] = Field(
        default_factory=lambda: {"data": "raw"},
        description="our array/metadata name -> psana accessor ('raw', 'calib', 'xtc1dump.image', 'tof:fex.peaks')",
    )
    start: int = Field(0, ge=0, description="first event index to read")
    stop: int | None = Field(None, ge=0, description="stop before this event index")
    stride: int = Field(1, ge=1, description="read every stride-th event from start")
    max_events: int | None = Field(None, ge=0, description="read at most this many events (all shards together)")
    missing: Literal["skip", "keep"] = Field(
        "skip", description="an event lacking a field: skip it, or keep it without that field"
    )
    copy_arrays: bool = Field(False, description="copy arrays out of psana's buffers (writeable; one memcpy)")
    load_calibration: bool = Field(False, description="fetch calibration constants from SLAC's database")

    @field_validator("files", mode="before")
    @classmethod
    def _one_file_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_input(self) -> PsanaOptions:
        if self.files and (self.exp or self.run is not None or self.dir):
            raise ValueError("give either files or exp/run/dir, not both")
        if not self.files and not (self.exp and self.run is not None):
            raise ValueError("give files, or exp and run (optionally dir)")
        if not self.fields:
            raise ValueError("fields must name at least one field")
        for name, spec in self.fields.items():
            if not name or name in RESERVED_METADATA:
                raise ValueError(f"fields: {name!r} is not a usable name")
            parse_accessor(name, spec, self.detector)
        if self.stop is not None and self.stop < self.start:
            raise ValueError(f"stop ({self.stop}) is before start ({self.start})")
        return self


def _import_psana() -> Any:
    try:
        import psana
    except ImportError as exc:
        raise MissingDependencyError.for_package("psana", "the psana source", extra="psana") from exc
    return psana


def _psana_version() -> str:
    try:
        return importlib.metadata.version("psana")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _checked(path: Path, walk: bool = True) -> Xtc2Scan:
    if (outside := outside_data_root(path)) is not None:
        raise SourceError(outside)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    try:
        return scan_xtc2(path, walk=walk)
    except NotXtc2Error as exc:
        raise SourceError(f"{path}: {exc}") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


@registry.register
class PsanaSource:
    Options: ClassVar[type[PluginOptions]] = PsanaOptions

    def __init__(self, options: PsanaOptions) -> None:
        self.options = options
        self.shard = Shard()
        self.accessors = [parse_accessor(n, s, options.detector) for n, s in options.fields.items()]
        self._datasource: Any = None
        self._frames: Iterator[Frame] | None = None
        self._warned_missing: set[str] = set()
        self.skipped_missing = 0  # events left out under missing: skip

    def set_shard(self, shard: Shard) -> None:
        """Read only the selected events this shard owns (the pipeline calls this under MPI)."""
        self.shard = shard

    # -- input files ---------------------------------------------------------------------------------------
    def _run_directory(self) -> Path:
        opts = self.options
        if opts.dir:
            return Path(opts.dir)
        root = os.environ.get(PSANA_DATA_ENV, "/reg/d/psdm")  # psana's own default
        return Path(root) / str(opts.exp)[:3] / str(opts.exp) / "xtc"

    def _scan_inputs(self) -> tuple[list[Xtc2Scan], str]:
        """Check every file psana will open; return the scans that count events and what was read."""
        opts = self.options
        if opts.files:
            scans = [_checked(Path(f)) for f in opts.files]
            return scans, ", ".join(opts.files)
        directory = self._run_directory()
        if not directory.is_dir():
            raise SourceError(f"{directory}: no such directory (exp={opts.exp} run={opts.run})")
        pattern = f"*r{opts.run:04d}-s*.smd.xtc2"  # the same files psana picks
        index_files = sorted((directory / "smalldata").glob(pattern))
        if not index_files:
            raise SourceError(
                f"{directory}: no run {opts.run} (looked for smalldata/{opts.exp}-r{opts.run:04d}-s*.smd.xtc2)"
            )
        scans = []
        for smd in index_files:
            scans.append(_checked(smd))
            _checked(directory / (smd.name.split(".smd")[0] + ".xtc2"), walk=False)
        return scans, f"exp={opts.exp} run={opts.run} dir={directory}"

    def _expected_events(self, scans: list[Xtc2Scan]) -> int | None:
        opts = self.options
        counts = [s.events for s in scans]
        if None in counts or (not opts.files and len(scans) > 1):  # several streams: events are merged
            return None
        total = sum(c for c in counts if c is not None)
        end = total if opts.stop is None else min(total, opts.stop)
        selected = len(range(opts.start, end, opts.stride))
        if opts.max_events is not None:
            selected = min(selected, opts.max_events)
        return len(range(self.shard.rank, selected, self.shard.size))

    # -- Source protocol -----------------------------------------------------------------------------------
    def open(self) -> SourceInfo:
        opts = self.options
        scans, what = self._scan_inputs()
        psana = _import_psana()
        calib = [] if opts.load_calibration else "all"
        try:
            if opts.files:
                self._datasource = psana.DataSource(files=opts.files, skip_calib_load=calib, log_level="WARNING")
            else:
                self._datasource = offline_run_datasource()(
                    exp=opts.exp,
                    run=opts.run,
                    dir=str(self._run_directory()),
                    skip_calib_load=calib,
                    log_level="WARNING",
                )
            runs = self._datasource.runs()
            first_run = next(runs, None)
        except Exception as exc:
            raise SourceError(f"{what}: psana cannot open it ({type(exc).__name__}: {exc})") from None
        if first_run is None:
            raise SourceError(f"{what}: holds no run (no BeginRun transition)")
        readers = self._bind(first_run, what)
        # psana prints to stdout when it looks for a run past the last one; stop at the runs the scan counted
        run_counts = [s.runs for s in scans]
        if opts.files and None not in run_counts:
            runs = itertools.islice(runs, max(0, sum(c for c in run_counts if c is not None) - 1))
        self._frames = self._read(itertools.chain([(first_run, readers)], self._bound(runs, what)), what)
        first = next(self._frames, None)
        if first is not None:
            self._frames = itertools.chain([first], self._frames)
        for scan in scans:
            if scan.truncated:
                log.warning("%s ends in an incomplete datagram; psana reads the complete events before it", scan.path)
        return SourceInfo(
            detector=opts.detector,
            geometry=Geometry(detector_shape=self._shape_of(first)),
            expected_events=self._expected_events(scans),
            details={
                "reader": "psana",
                "psana_version": _psana_version(),
                "experiment": first_run.expt if first_run.expt is not None else (opts.exp or ""),
                "run": self._run_number(first_run),
                "input": what,
                "detectors": sorted(first_run.detnames),
                "fields": {a.name: a.spec for a in self.accessors},
                "truncated": [str(s.path) for s in scans if s.truncated],
                **self._dtype_of(first),
            },
        )

    def events(self) -> Iterator[Frame]:
        if self._frames is None:
            raise SourceError("psana source: events() called before open()")
        yield from self._frames

    def close(self) -> None:
        if self._frames is not None and hasattr(self._frames, "close"):
            self._frames.close()
        self._frames = None
        self._datasource = None

    # -- reading -------------------------------------------------------------------------------------------
    def _bind(self, run: Any, what: str) -> list[tuple[str, Any]]:
        try:
            return bind_accessors(run, self.accessors, what)
        except ValueError as exc:
            raise SourceError(str(exc)) from None

    def _bound(self, runs: Iterator[Any], what: str) -> Iterator[tuple[Any, list[tuple[str, Any]]]]:
        for run in runs:
            yield run, self._bind(run, what)

    def _run_number(self, run: Any) -> int:
        """The run's number from its runinfo record; a file without one (legal XTC2) is the configured run, or 0."""
        if run.runnum is not None:
            return int(run.runnum)
        return self.options.run if self.options.run is not None else 0

    def _read(self, runs: Iterator[tuple[Any, list[tuple[str, Any]]]], what: str) -> Iterator[Frame]:
        opts = self.options
        index = -1  # event index across all runs, in psana's order
        selected = 0
        if opts.max_events == 0:
            return
        for run, readers in runs:
            events = iter(run.events())
            while True:
                try:
                    evt = next(events, None)
                except Exception as exc:
                    raise SourceError(f"{what}: psana failed after event {index} ({exc})") from None
                if evt is None:
                    break
                index += 1
                if opts.stop is not None and index >= opts.stop:
                    return
                if index < opts.start or (index - opts.start) % opts.stride:
                    continue
                selected += 1
                if self.shard.owns(selected - 1):
                    frame = self._frame(evt, index, self._run_number(run), readers, what)
                    if frame is not None:
                        yield frame
                if opts.max_events is not None and selected >= opts.max_events:
                    return

    def _frame(self, evt: Any, index: int, run_number: int, readers: list, what: str) -> Frame | None:
        timestamp = int(evt.timestamp)
        arrays: dict[str, Any] = {}
        metadata: dict[str, Any] = {"psana_timestamp": timestamp, "psana_run": run_number}
        for name, read in readers:
            try:
                value = read(evt)
            except Exception as exc:
                raise SourceError(f"{what}: event {index}: reading fields.{name} failed ({exc})") from None
            if value is None:
                if name not in self._warned_missing:
                    self._warned_missing.add(name)
                    log.warning("%s: event %d has no %s (missing=%s)", what, index, name, self.options.missing)
                if self.options.missing == "skip":
                    self.skipped_missing += 1
                    return None
                continue
            if isinstance(value, np.ndarray) and value.ndim > 0:
                arrays[name] = value.copy() if self.options.copy_arrays else value
            else:
                metadata[name] = value.item() if isinstance(value, np.generic | np.ndarray) else value
        return Frame(event=index, arrays=arrays, metadata=metadata, timestamp=to_unix_seconds(timestamp))

    def outcome_counts(self) -> dict[str, int]:
        return {"skipped_missing": self.skipped_missing}

    @staticmethod
    def _image_of(frame: Frame | None) -> Any:
        """The first event's image (its ``data`` array, else its first), or None."""
        if frame is None or not frame.arrays:
            return None
        return frame.arrays.get("data", next(iter(frame.arrays.values())))

    def _dtype_of(self, frame: Frame | None) -> dict[str, str]:
        """``image_dtype`` (the Stream V2 start field) of the first event's image, when it has one."""
        array = self._image_of(frame)
        return {} if array is None else {"image_dtype": np.dtype(array.dtype).name}

    def _shape_of(self, frame: Frame | None) -> tuple[int, ...]:
        array = self._image_of(frame)
        return () if array is None else tuple(int(n) for n in array.shape)
