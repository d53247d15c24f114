"""``hdf5``: events from HDF5 files (CXI, NeXus NXmx as EIGER/DECTRIS write it, or any dataset), in order.

The files' events are concatenated into one run; ``start``/``stop``/``stride``/``max_events`` select from it
and an MPI shard then takes every ``size``-th selected event. Events are read ``read_events`` at a time with
one HDF5 call (fresh arrays each call, so frames never share a reused buffer). Geometry and the pixel mask
come from the first file, with the options' overrides applied; an EIGER filewriter master file also gives its
flatfield, count-rate table and detector settings (``_eiger_filewriter``). Extra per-event datasets ride along as
arrays or metadata.

    source: {type: hdf5, files: ["/data/run7/*_master.h5"], metadata: {energy_ev: /entry/photon_energy}}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from photonstream.config.base import PluginOptions
from photonstream.errors import SourceError
from photonstream.frames import Frame
from photonstream.sources._eiger_filewriter import add_filewriter_facts
from photonstream.sources._hdf5_files import (
    Hdf5ReadOptions,
    RunFile,
    check_frames_dataset,
    data_paths,
    describe,
    detect_layout,
    event_value,
    expand_files,
    open_run_file,
)
from photonstream.sources.base import Shard, SourceInfo, registry

PLUGIN = "hdf5"


class Hdf5Options(Hdf5ReadOptions):
    type: Literal["hdf5"] = "hdf5"
    files: list[str] = Field(min_length=1, description="HDF5 files or glob patterns (sorted), read in this order")
    arrays: dict[str, str] = Field(
        default_factory=dict,
        description="extra per-event datasets sent as event arrays: {name: dataset path}",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="extra per-event datasets sent as event metadata: {key: dataset path}",
    )
    timestamps: str | None = Field(None, description="per-event dataset of event times (s since the epoch)")
    start: int = Field(0, ge=0, description="first event of the concatenated run")
    stop: int | None = Field(None, ge=0, description="stop before this event of the concatenated run")
    stride: int = Field(1, ge=1, description="take every stride-th event")
    max_events: int | None = Field(None, ge=0, description="at most this many events (over all MPI ranks)")
    read_events: int = Field(16, ge=1, le=4096, description="events read per HDF5 call")

    @field_validator("files", mode="before")
    @classmethod
    def _one_pattern_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Hdf5Options:
        if self.stop is not None and self.stop < self.start:
            raise ValueError(f"stop ({self.stop}) must not be less than start ({self.start})")
        if self.array in self.arrays:
            raise ValueError(f"arrays: {self.array!r} is already the frame array's name")
        return self


@dataclass(frozen=True, slots=True)
class _Block:
    """One frames dataset: ``count`` events of the run starting at ``first_global``."""

    file_index: int
    path: str
    first_global: int
    count: int
    first_in_file: int  # index of its first event among the file's events (extra datasets are indexed so)


def _within(selection: range, first: int, count: int) -> range:
    """The part of ``selection`` that falls in [first, first + count)."""
    step = selection.step
    k0 = max(0, -(-(first - selection.start) // step))
    k1 = max(0, -(-(first + count - selection.start) // step))
    return selection[k0:k1]


@registry.register
class Hdf5Source:
    Options: ClassVar[type[PluginOptions]] = Hdf5Options

    def __init__(self, options: Hdf5Options) -> None:
        self.options = options
        self.shard = Shard()
        self._files: list[tuple[Path, str]] = []  # (path, layout)
        self._blocks: list[_Block] = []
        self._selection = range(0)
        self._open: RunFile | None = None

    def set_shard(self, shard: Shard) -> None:
        self.shard = shard

    # -- open ------------------------------------------------------------------------------------------------
    def open(self) -> SourceInfo:
        opts = self.options
        info: SourceInfo | None = None
        frame_shape: tuple[int, ...] | None = None
        dtype: Any = None
        total = 0
        for file_index, path in enumerate(expand_files(opts.files, PLUGIN)):
            run_file = open_run_file(path, PLUGIN)
            try:
                layout = detect_layout(run_file, opts.layout)
                in_file = 0
                for dataset_path in data_paths(run_file, layout, opts.dataset):
                    ds = run_file.dataset(dataset_path)
                    check_frames_dataset(ds, run_file, dataset_path)
                    shape = tuple(int(n) for n in ds.shape[1:])
                    if frame_shape is None:
                        frame_shape, dtype = shape, ds.dtype
                    elif shape != frame_shape or ds.dtype != dtype:
                        raise SourceError(
                            f"{PLUGIN}: {path}: {dataset_path!r} holds {shape} {ds.dtype} frames, "
                            f"earlier files hold {frame_shape} {dtype}"
                        )
                    count = int(ds.shape[0])
                    self._blocks.append(_Block(file_index, dataset_path, total, count, in_file))
                    total += count
                    in_file += count
                self._check_extras(run_file, in_file)
                if info is None:
                    assert frame_shape is not None
                    info = describe(run_file, layout, opts, frame_shape, dtype)
                    add_filewriter_facts(info, run_file, layout, opts, frame_shape, dtype)
            finally:
                run_file.close()
            self._files.append((path, layout))
        assert info is not None  # files has at least one entry, and expand_files never returns none
        selection = range(opts.start, total if opts.stop is None else min(opts.stop, total), opts.stride)
        if opts.max_events is not None:
            selection = selection[: opts.max_events]
        self._selection = selection[self.shard.rank :: self.shard.size]
        info.expected_events = len(self._selection)
        info.details.update({"files": len(self._files), "run_events": total, "selected_events": len(selection)})
        return info

    def _extras(self) -> dict[str, str]:
        extras = {f"array {name}": path for name, path in self.options.arrays.items()}
        extras.update({f"metadata {key}": path for key, path in self.options.metadata.items()})
        if self.options.timestamps:
            extras["timestamps"] = self.options.timestamps
        return extras

    def _check_extras(self, run_file: RunFile, events_in_file: int) -> None:
        for what, path in self._extras().items():
            ds = run_file.dataset(path)
            if len(ds.shape) == 0 or ds.shape[0] < events_in_file:
                raise SourceError(
                    f"{PLUGIN}: {run_file.path}: {what} dataset {path!r} has shape {tuple(ds.shape)}; "
                    f"expected one entry per event ({events_in_file} events)"
                )

    # -- events ----------------------------------------------------------------------------------------------
    def events(self) -> Iterator[Frame]:
        for file_index, (path, _layout) in enumerate(self._files):
            parts = [
                (block, _within(self._selection, block.first_global, block.count))
                for block in self._blocks
                if block.file_index == file_index
            ]
            if not any(len(r) for _, r in parts):
                continue
            run_file = open_run_file(path, PLUGIN)
            self._open = run_file
            try:
                for block, selected in parts:
                    if len(selected):
                        yield from self._read_block(run_file, block, selected)
            finally:
                run_file.close()
                self._open = None

    def _read_block(self, run_file: RunFile, block: _Block, selected: range) -> Iterator[Frame]:
        opts = self.options
        data = run_file.dataset(block.path)
        arrays = {name: run_file.dataset(p) for name, p in opts.arrays.items()}
        metadata = {key: run_file.dataset(p) for key, p in opts.metadata.items()}
        timestamps = run_file.dataset(opts.timestamps) if opts.timestamps else None
        source_file = str(run_file.path)
        for k in range(0, len(selected), opts.read_events):
            chunk = selected[k : k + opts.read_events]
            lo, hi, step = chunk.start - block.first_global, chunk[-1] - block.first_global + 1, chunk.step
            at_file = slice(lo + block.first_in_file, hi + block.first_in_file, step)
            try:
                frames = data[lo:hi:step]
                extra_arrays = {name: ds[at_file] for name, ds in arrays.items()}
                extra_meta = {key: ds[at_file] for key, ds in metadata.items()}
                times = np.asarray(timestamps[at_file], dtype=np.float64) if timestamps is not None else None
            except (OSError, ValueError, TypeError) as exc:
                raise SourceError(
                    f"{PLUGIN}: {run_file.path}: cannot read events {lo}..{hi - 1} of {block.path!r} ({exc})"
                ) from None
            for j, event in enumerate(chunk):
                in_file = block.first_in_file + lo + j * step
                meta: dict[str, Any] = {"source_file": source_file, "source_index": in_file}
                meta.update({key: event_value(values[j]) for key, values in extra_meta.items()})
                event_arrays = {opts.array: frames[j]}
                event_arrays.update({name: np.asarray(values[j]) for name, values in extra_arrays.items()})
                yield Frame(
                    event=event,
                    arrays=event_arrays,
                    metadata=meta,
                    timestamp=float(times[j]) if times is not None else 0.0,
                )

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None
