"""``hdf5-follow``: events from a run directory while the DAQ is still writing it.

Files matching ``pattern`` are followed in name order; each event is emitted once, in order. A file that a writer
holds in SWMR mode is kept open and its datasets refreshed; any other file is re-opened at each poll (a plain
writer's file opens only once the writer has closed it). A file counts as complete once a later file exists.
The run ends when the end marker (a file name or glob in the directory, e.g. ``END`` or ``*.done``) or the end
attribute (a true root attribute of a data file) appears, after everything written before it was emitted, or
when no new event has arrived for ``idle_timeout_s``.

    source: {type: hdf5-follow, directory: /data/run12, pattern: "*_data_*.h5", end_marker: run12.done}
"""

from __future__ import annotations

import contextlib
import glob
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from photonstream._data_root import outside_data_root
from photonstream.config.base import PluginOptions
from photonstream.errors import SourceError
from photonstream.frames import Frame
from photonstream.sources._eiger_filewriter import add_filewriter_facts
from photonstream.sources._hdf5_files import (
    Hdf5ReadOptions,
    RunFile,
    data_paths,
    describe,
    detect_layout,
    import_h5py,
    try_open,
)
from photonstream.sources.base import Shard, SourceInfo, registry

PLUGIN = "hdf5-follow"


class Hdf5FollowOptions(Hdf5ReadOptions):
    type: Literal["hdf5-follow"] = "hdf5-follow"
    directory: str = Field(min_length=1, description="the run directory the DAQ writes into")
    pattern: str = Field("*.h5", min_length=1, description="glob (relative to directory) of the data files")
    end_marker: str | None = Field("END", description="file name or glob in directory that marks the end of run")
    end_attribute: str | None = Field(None, description="root attribute of a data file that, when true, ends the run")
    idle_timeout_s: float = Field(60.0, gt=0, description="end the run after this long without a new event")
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="seconds between looks at the directory")
    max_events: int | None = Field(None, ge=0, description="stop after this many events")
    read_events: int = Field(16, ge=1, le=4096, description="events read per HDF5 call")


@dataclass
class _Followed:
    """A data file being followed: how many of its events went out, and its open handle when SWMR."""

    path: Path
    emitted: int = 0
    handle: RunFile | None = None
    swmr: bool = False
    waiting_for: str = ""  # why it could not be read at the last look

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


@dataclass
class FollowStats:
    """What following the run took: files seen, files read while open for SWMR writing, opens, how it ended."""

    files: int = 0
    opens: int = 0
    ended_by: str = ""
    swmr_paths: set[Path] = field(default_factory=set)

    @property
    def swmr_files(self) -> int:
        return len(self.swmr_paths)


@registry.register
class Hdf5FollowSource:
    Options: ClassVar[type[PluginOptions]] = Hdf5FollowOptions

    def __init__(self, options: Hdf5FollowOptions) -> None:
        self.options = options
        self.directory = Path(options.directory)
        self.shard = Shard()
        self.stats = FollowStats()
        self._files: list[_Followed] = []
        self._frame_format: tuple[tuple[int, ...], Any] | None = None
        self._next_event = 0  # index of the next event of the run (over all files)
        self._attribute_seen = False

    def set_shard(self, shard: Shard) -> None:
        self.shard = shard

    # -- looking at the directory ---------------------------------------------------------------------------
    def _marker_present(self) -> bool:
        marker = self.options.end_marker
        return marker is not None and bool(glob.glob(str(self.directory / marker)))

    def _discover(self) -> None:
        known = {f.path for f in self._files}
        markers = set(glob.glob(str(self.directory / self.options.end_marker))) if self.options.end_marker else set()
        found = sorted(p for p in glob.glob(str(self.directory / self.options.pattern)) if p not in markers)
        for name in found:
            path = Path(name)
            if path not in known and (outside := outside_data_root(path)) is not None:
                raise SourceError(f"{PLUGIN}: {outside}")
            if path not in known and path.is_file():
                self._files.append(_Followed(path))
                self.stats.files += 1

    def _ended(self) -> bool:
        return self._marker_present() or self._attribute_seen

    # -- reading one file -----------------------------------------------------------------------------------
    def _open(self, followed: _Followed) -> RunFile | None:
        """The file opened for this look (kept open when SWMR), or None when it is not readable yet."""
        if followed.handle is not None:
            return followed.handle
        h5py = import_h5py()
        if not followed.path.exists():
            raise SourceError(f"{PLUGIN}: {followed.path}: file disappeared while being followed")
        if not h5py.is_hdf5(str(followed.path)):
            followed.waiting_for = "not (yet) an HDF5 file"
            return None
        try:
            handle, swmr = try_open(followed.path)
        except OSError as exc:  # a plain writer still holds it, or it is half-written
            followed.waiting_for = f"cannot open ({exc})"
            return None
        self.stats.opens += 1
        if swmr:
            self.stats.swmr_paths.add(followed.path)
        run_file = RunFile(path=followed.path, handle=handle, plugin=PLUGIN, swmr=swmr)
        if self.options.end_attribute and bool(handle.attrs.get(self.options.end_attribute, False)):
            self._attribute_seen = True
        followed.swmr = swmr
        if swmr:
            followed.handle = run_file
        return run_file

    def _datasets(self, followed: _Followed, run_file: RunFile) -> list[Any] | None:
        try:
            layout = detect_layout(run_file, self.options.layout)
            datasets = [run_file.dataset(p) for p in data_paths(run_file, layout, self.options.dataset)]
        except SourceError as exc:  # the writer may not have created the dataset (or linked file) yet
            followed.waiting_for = str(exc)
            return None
        for ds in datasets:
            if run_file.swmr:
                with contextlib.suppress(Exception):  # datasets of linked non-SWMR files cannot refresh
                    ds.refresh()
            if len(ds.shape) < 2:
                raise SourceError(
                    f"{PLUGIN}: {run_file.path}: {ds.name!r} has shape {tuple(ds.shape)}; "
                    "expected (events, ...) with at least 2 dimensions"
                )
            frame_format = (tuple(int(n) for n in ds.shape[1:]), ds.dtype)
            if self._frame_format is None:
                self._frame_format = frame_format
            elif frame_format != self._frame_format:
                raise SourceError(
                    f"{PLUGIN}: {run_file.path}: holds {frame_format[0]} {frame_format[1]} frames, "
                    f"earlier files hold {self._frame_format[0]} {self._frame_format[1]}"
                )
        return datasets

    def _drain(self, followed: _Followed, budget: int | None) -> Iterator[Frame]:
        """Emit the events of this file not emitted yet (all that are readable now)."""
        run_file = self._open(followed)
        if run_file is None:
            return
        try:
            datasets = self._datasets(followed, run_file)
            if datasets is None:
                return
            followed.waiting_for = ""
            first_in_file = 0
            for ds in datasets:
                count = int(ds.shape[0])
                start = max(followed.emitted - first_in_file, 0)
                if start < count:
                    yield from self._read(run_file, ds, first_in_file, start, count, followed, budget)
                first_in_file += count
            if followed.emitted > first_in_file:
                raise SourceError(
                    f"{PLUGIN}: {followed.path}: shrank from {followed.emitted} to {first_in_file} events"
                )
        finally:
            if not followed.swmr:
                run_file.close()

    def _read(
        self,
        run_file: RunFile,
        ds: Any,
        first_in_file: int,
        start: int,
        stop: int,
        followed: _Followed,
        budget: int | None,
    ) -> Iterator[Frame]:
        step = self.options.read_events
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            try:
                block = ds[lo:hi]
            except (OSError, ValueError) as exc:
                raise SourceError(f"{PLUGIN}: {run_file.path}: cannot read events {lo}..{hi - 1} ({exc})") from None
            for j in range(hi - lo):
                event = self._next_event
                self._next_event += 1
                followed.emitted += 1
                if not self.shard.owns(event):
                    continue
                if budget is not None and self._emitted >= budget:
                    return
                self._emitted += 1
                yield Frame(
                    event=event,
                    arrays={self.options.array: block[j]},
                    metadata={"source_file": str(run_file.path), "source_index": first_in_file + lo + j},
                )

    # -- the run --------------------------------------------------------------------------------------------
    def open(self) -> SourceInfo:
        """Wait for the first readable data file (up to the idle timeout) and describe the run from it."""
        opts = self.options
        deadline = time.monotonic() + opts.idle_timeout_s
        while True:
            ended = self._ended()
            self._discover()
            for followed in self._files:
                run_file = self._open(followed)
                if run_file is None:
                    continue
                try:
                    datasets = self._datasets(followed, run_file)
                    if datasets is not None:
                        layout = detect_layout(run_file, opts.layout)
                        shape, dtype = self._frame_format  # type: ignore[misc]
                        info = describe(run_file, layout, opts, shape, dtype)
                        add_filewriter_facts(info, run_file, layout, opts, shape, dtype)
                        info.details.update({"directory": str(self.directory), "pattern": opts.pattern})
                        return info
                finally:
                    if not followed.swmr:
                        run_file.close()
            if ended:
                return SourceInfo(details={"directory": str(self.directory), "files": 0}, expected_events=0)
            if time.monotonic() >= deadline:
                raise SourceError(self._nothing_readable())
            time.sleep(opts.poll_interval_s)

    def _nothing_readable(self) -> str:
        where = f"{PLUGIN}: {self.directory}"
        if not self.directory.is_dir():
            return f"{where}: directory does not exist (waited {self.options.idle_timeout_s:g} s)"
        if not self._files:
            return f"{where}: no file matching {self.options.pattern!r} appeared in {self.options.idle_timeout_s:g} s"
        stuck = self._files[0]
        return f"{PLUGIN}: {stuck.path}: not readable after {self.options.idle_timeout_s:g} s: {stuck.waiting_for}"

    def events(self) -> Iterator[Frame]:
        opts = self.options
        self._emitted = 0
        current = 0  # the file being followed; earlier ones are complete
        last_progress = time.monotonic()
        while True:
            ended = self._ended()  # looked at before the data, so all data written before the marker is read
            self._discover()
            before = self._next_event
            while current < len(self._files):
                followed = self._files[current]
                yield from self._drain(followed, opts.max_events)
                if opts.max_events is not None and self._emitted >= opts.max_events:
                    self.stats.ended_by = "max_events"
                    return
                if current + 1 < len(self._files) and not followed.waiting_for:
                    followed.close()  # a later file exists: this one is complete
                    current += 1
                else:
                    break
            stuck = self._files[current] if current < len(self._files) and self._files[current].waiting_for else None
            if self._next_event > before:
                last_progress = time.monotonic()
            elif current < len(self._files):
                self._files[current].close()  # re-open next time: sees new attributes, or a writer that finished
            if ended and stuck is None:
                self.stats.ended_by = "end attribute" if self._attribute_seen else "end marker"
                return
            if time.monotonic() - last_progress >= opts.idle_timeout_s:
                if stuck is not None:
                    raise SourceError(
                        f"{PLUGIN}: {stuck.path}: not readable after {opts.idle_timeout_s:g} s: {stuck.waiting_for}"
                    )
                self.stats.ended_by = "idle timeout"
                return
            time.sleep(opts.poll_interval_s)

    def close(self) -> None:
        for followed in self._files:
            followed.close()
