"""One CXI file of the ``file`` handler: the start message's facts, then events appended row by row.

Layout (rows are events, in arrival order):
- ``/entry_1/data_1/data`` (N, ...): the frame array, extendable, one frame per chunk, with the chosen filter;
  other event arrays go to ``/entry_1/data_1/<name>`` the same way.
- ``/entry_1/result_1/<key>`` (N,): scalar metadata (bool, int, float, str), plus ``event`` and ``timestamp``;
  fixed-shape array metadata as (N, ...).
- ``/entry_1/result_1/nPeaks``, ``peakXPosRaw``, ``peakYPosRaw``, ``peakTotalIntensity``: CrystFEL's CXI peak
  list, padded to ``max_peaks``, from the ``peaks`` metadata as the ``hitfinder`` step writes it (rows of
  slow-scan px, fast-scan px, intensity; slow is flattened over modules): X is the fast-scan coordinate.
- ``/entry_1/instrument_1/{detector_1,source_1}``: geometry, mask and calibration from the start message.
- root attributes: stream identity, the pipeline config and source details as JSON, and at the end the end
  message's counts and reason.

Rows missing from an event keep the dataset's fill value (0, NaN for floats, "" for strings). Values that cannot
be stored as a fixed per-event dataset (lists, dicts, a shape change) are left out and named in the root
attribute ``skipped``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from photonstream.frames import (
    CalibrationMessage,
    EncodedArray,
    EndMessage,
    Frame,
    StartMessage,
)
from photonstream.sources._hdf5_files import JOULE_PER_EV, import_h5py

DATA_GROUP = "/entry_1/data_1"
RESULT_GROUP = "/entry_1/result_1"
DETECTOR_GROUP = "/entry_1/instrument_1/detector_1"
SOURCE_GROUP = "/entry_1/instrument_1/source_1"
PEAK_DATASETS = ("nPeaks", "peakXPosRaw", "peakYPosRaw", "peakTotalIntensity")
PEAK_COLUMNS = (1, 0, 2)  # columns of a ``peaks`` row (slow, fast, intensity) that feed X, Y, intensity
RESERVED_RESULTS = frozenset({"event", "timestamp", *PEAK_DATASETS})
SCALAR_CHUNK = 1024  # rows per chunk of 1-D per-event datasets
SMALL_CHUNK_ELEMENTS = 65536  # at most this many elements per chunk of per-event metadata arrays


def to_json(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        return str(obj)

    return json.dumps(value, default=default, sort_keys=True)


def filter_options(compression: str, level: int | None) -> dict[str, Any]:
    """h5py create_dataset keywords for the handler's compression choice."""
    import hdf5plugin

    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4 if level is None else level}
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "zstd":
        return dict(hdf5plugin.Zstd(clevel=3 if level is None else level))
    return {}


def _scalar_kind(value: Any) -> str | None:
    """'bool', 'int', 'float' or 'str' for a value that fits a 1-D per-event dataset; None otherwise."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


class CxiWriter:
    """Writes one CXI file; ``append`` adds events, ``finish`` records the end, ``close`` flushes and closes."""

    def __init__(
        self,
        path: Path,
        start: StartMessage,
        *,
        part: int,
        compression: str,
        level: int | None,
        data_array: str,
        arrays: frozenset[str] | None,
        max_peaks: int,
        overwrite: bool,
    ) -> None:
        h5py = import_h5py()
        self._h5py = h5py
        self.path = path
        self.compression = compression
        self._filter = filter_options(compression, level)
        self._data_array = data_array
        self._arrays = arrays
        self._max_peaks = max_peaks
        self.count = 0
        self.skipped: set[str] = set()
        self.truncated_peak_lists = 0
        self.direct_chunks = 0
        self._datasets: dict[str, Any] = {}  # path -> per-event dataset
        self._kinds: dict[str, str] = {}  # result path -> scalar kind
        self._variable: set[str] = set()  # result paths of array metadata whose shape changes: not written
        self.file = h5py.File(path, "w" if overwrite else "w-")
        self._write_start(start, part)

    # -- start ----------------------------------------------------------------------------------------------
    def _write_start(self, start: StartMessage, part: int) -> None:
        f = self.file
        f.attrs.update(
            {
                "creator": "photonstream",
                "stream_id": start.stream_id,
                "experiment": start.experiment,
                "run": start.run,
                "detector": start.detector,
                "part": part,
                "serializer": start.serializer,
                "pipeline_config": to_json(start.pipeline),
                "source": to_json(start.source),
            }
        )
        f["cxi_version"] = 150
        f.create_group(DATA_GROUP)
        f.create_group(RESULT_GROUP)
        g = start.geometry
        det = f.create_group(DETECTOR_GROUP)
        for name, value, units in [
            ("distance", g.distance_m, "m"),
            ("x_pixel_size", g.pixel_size_m, "m"),
            ("y_pixel_size", g.pixel_size_m, "m"),
            ("beam_center_x", g.beam_center_px[0], "pixel"),
            ("beam_center_y", g.beam_center_px[1], "pixel"),
        ]:
            det[name] = value
            det[name].attrs["units"] = units
        det["description"] = start.detector
        for name, array in start.arrays.items():
            if isinstance(array, np.ndarray) and not array.dtype.hasobject:
                det[name] = array
        cal = det.create_group("calibration")
        cal.attrs.update(
            {
                "identifier": start.calibration.identifier,
                "version": start.calibration.version,
                "references": to_json(start.calibration.references),
            }
        )
        for name, array in start.calibration.arrays.items():
            cal[name] = array
        src = f.create_group(SOURCE_GROUP)
        src["energy"] = g.photon_energy_ev * JOULE_PER_EV
        src["energy"].attrs["units"] = "J"
        src["wavelength"] = g.wavelength_m
        src["wavelength"].attrs["units"] = "m"

    def calibration(self, message: CalibrationMessage) -> None:
        group = self.file.require_group("/entry_1/calibration_updates").create_group(f"update_{message.seq:08d}")
        group.attrs.update(
            {
                "from_event": message.from_event,
                "identifier": message.calibration.identifier,
                "version": message.calibration.version,
                "references": to_json(message.calibration.references),
            }
        )
        for name, array in message.calibration.arrays.items():
            group[name] = array

    # -- events ---------------------------------------------------------------------------------------------
    def append(self, frames: list[Frame]) -> None:
        first = self.count
        self.count += len(frames)
        for dataset in self._datasets.values():
            dataset.resize(self.count, axis=0)
        self._write_column("event", "int", [f.event for f in frames], first)
        self._write_column("timestamp", "float", [f.timestamp for f in frames], first)
        for row, frame in enumerate(frames, start=first):
            for name, value in frame.arrays.items():
                if self._arrays is None or name in self._arrays or name == self._data_array:
                    self._write_array(name, value, frame, row)
            for key, value in frame.metadata.items():
                self._write_metadata(key, value, row)

    def _per_event_dataset(self, path: str, shape: tuple[int, ...], dtype: Any, frame_like: bool) -> Any:
        """An extendable (N, *shape) dataset, created on first use with as many rows as the file has."""
        dataset = self._datasets.get(path)
        if dataset is not None:
            return dataset
        dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
        kwargs: dict[str, Any] = {}
        if frame_like and shape:
            # one frame per chunk; a chunk is never revisited, so caching it would only delay the write
            kwargs.update(chunks=(1, *shape), rdcc_nbytes=0, **self._filter)
        else:
            rows = max(1, min(SCALAR_CHUNK, SMALL_CHUNK_ELEMENTS // max(1, int(np.prod(shape)))))
            kwargs["chunks"] = (rows, *shape)
        if dtype.kind == "f":
            kwargs["fillvalue"] = np.nan
        dataset = self.file.create_dataset(
            path, shape=(self.count, *shape), maxshape=(None, *shape), dtype=dtype, **kwargs
        )
        self._datasets[path] = dataset
        return dataset

    def _write_array(self, name: str, value: Any, frame: Frame, row: int) -> None:
        path = f"{DATA_GROUP}/data" if name == self._data_array else f"{DATA_GROUP}/{name}"
        if name != self._data_array and name == "data":
            self.skipped.add(f"array {name} (name taken by the frame array)")
            return
        encoded = isinstance(value, EncodedArray)
        dtype = np.dtype(value.dtype) if encoded else value.dtype
        shape = tuple(value.shape)
        if dtype.hasobject or dtype.kind in "USV" or 0 in shape:
            self.skipped.add(f"array {name} ({dtype} {shape})")
            return
        dataset = self._per_event_dataset(path, shape, dtype, frame_like=True)
        if dataset.shape[1:] != shape or dataset.dtype != dtype:
            self.skipped.add(
                f"array {name} (event {frame.event}: {dtype} {shape}, file has {dataset.dtype} {dataset.shape[1:]})"
            )
            return
        if encoded and value.codec == self.compression and shape:
            dataset.id.write_direct_chunk((row,) + (0,) * len(shape), value.data)
            self.direct_chunks += 1
            return
        dataset[row] = frame.array(name) if encoded else value

    def _write_column(self, key: str, kind: str, values: list[Any], first: int) -> None:
        dataset = self._result_dataset(key, kind)
        dataset[first : first + len(values)] = values

    def _result_dataset(self, key: str, kind: str) -> Any:
        path = f"{RESULT_GROUP}/{key}"
        dtype = {"bool": np.bool_, "int": np.int64, "float": np.float64, "str": self._h5py.string_dtype()}[kind]
        dataset = self._per_event_dataset(path, (), dtype, frame_like=False)
        self._kinds.setdefault(path, kind)
        return dataset

    def _write_metadata(self, key: str, value: Any, row: int) -> None:
        if value is None:
            return
        if key == "peaks":
            self._write_peaks(value, row)
            return
        name = key.replace("/", "_")
        if name in RESERVED_RESULTS or name in (".", ""):
            self.skipped.add(f"metadata {key} (reserved name)")
            return
        kind = _scalar_kind(value)
        if kind is not None:
            path = f"{RESULT_GROUP}/{name}"
            existing = self._kinds.get(path)
            if existing is not None and existing != kind and not (existing == "float" and kind in ("int", "bool")):
                self.skipped.add(f"metadata {key} ({kind} value in a {existing} column)")
                return
            self._result_dataset(name, existing or kind)[row] = value
            return
        path = f"{RESULT_GROUP}/{name}"
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and path not in self._variable:
            if 0 in value.shape:
                self._variable.add(path)
            else:
                dataset = self._per_event_dataset(path, value.shape, value.dtype, frame_like=False)
                if dataset.shape[1:] == value.shape and dataset.dtype == value.dtype:
                    dataset[row] = value
                    return
                self._variable.add(path)
        if path in self._variable:  # a per-event shape that changes: no fixed (N, ...) column holds it
            self._datasets.pop(path, None)
            if path in self.file:
                del self.file[path]
            self.skipped.add(f"metadata {key} (array whose shape or type changes between events)")
            return
        self.skipped.add(f"metadata {key} ({type(value).__name__})")

    def _write_peaks(self, value: Any, row: int) -> None:
        try:
            peaks = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            peaks = np.empty((0, 0))
        if peaks.ndim != 2 or (peaks.size and peaks.shape[1] < 3):
            self.skipped.add("metadata peaks (not an N x 3 array)")
            return
        n = min(len(peaks), self._max_peaks)
        if len(peaks) > self._max_peaks:
            self.truncated_peak_lists += 1
        count = self._per_event_dataset(f"{RESULT_GROUP}/nPeaks", (), np.int32, frame_like=False)
        count[row] = n
        if n == 0:
            return
        for column, name in zip(PEAK_COLUMNS, PEAK_DATASETS[1:], strict=True):
            path = f"{RESULT_GROUP}/{name}"
            dataset = self._datasets.get(path)
            if dataset is None:
                dataset = self.file.create_dataset(
                    path,
                    shape=(self.count, self._max_peaks),
                    maxshape=(None, self._max_peaks),
                    dtype=np.float32,
                    chunks=(1, self._max_peaks),
                    fillvalue=0.0,
                )
                self._datasets[path] = dataset
            padded = np.zeros(self._max_peaks, np.float32)
            padded[:n] = peaks[:n, column]
            dataset[row] = padded

    # -- end ------------------------------------------------------------------------------------------------
    def finish(self, end: EndMessage | None) -> None:
        """Record how the stream ended (also on files of earlier parts, reopened for this)."""
        record_end(self.file, end)

    def close(self) -> None:
        if not self.file.id.valid:
            return
        self.file.attrs["events_in_file"] = self.count
        self.file.attrs["skipped"] = to_json(sorted(self.skipped))
        self.file.attrs["truncated_peak_lists"] = self.truncated_peak_lists
        self.file.flush()
        self.file.close()


def record_end(h5file: Any, end: EndMessage | None) -> None:
    if end is None:
        return
    h5file.attrs.update(
        {
            "events_sent": end.events_sent,
            "end_reason": end.reason,
            "end_error": end.error,
            "counts": to_json(end.counts),
        }
    )
