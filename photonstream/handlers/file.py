"""``file``: writes the stream as CXI HDF5 files, one per run or rolling by size (``_part001``, ``_part002``...).

Frames go to ``/entry_1/data_1/data`` (one frame per chunk, compression none|gzip|bslz4|lz4|zstd), metadata to
``/entry_1/result_1``, peak lists in CrystFEL's CXI layout; see ``_cxi_writer.py`` for the full layout. Arrays a
``compress`` step already encoded are written as HDF5 chunks unchanged when their codec is the file's filter,
otherwise decoded. The handler writes arrays itself (``needs_bytes = False``). Output paths must stay inside
``directory``.

    handlers: [{type: file, directory: /data/out, compression: bslz4, max_file_bytes: 4000000000}]
"""

from __future__ import annotations

import string
from pathlib import Path, PurePath
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from photonstream.config.base import PluginOptions
from photonstream.errors import HandlerError
from photonstream.frames import CalibrationMessage, EndMessage, Frame, FrameBatch, Message, StartMessage
from photonstream.handlers._cxi_writer import CxiWriter, record_end
from photonstream.handlers.base import registry
from photonstream.serializers.base import Buffer
from photonstream.sources._hdf5_files import import_h5py

TEMPLATE_FIELDS = ("experiment", "run", "stream_id", "detector")
_LEVELS = {"gzip": (0, 9), "zstd": (1, 22)}


class FileOptions(PluginOptions):
    type: Literal["file"] = "file"
    directory: str = Field(min_length=1, description="directory the files are written into")
    template: str = Field(
        "{experiment}_r{run:04d}_{stream_id}.cxi",
        min_length=1,
        description="file name inside directory; fields: experiment, run, stream_id, detector",
    )
    compression: Literal["none", "gzip", "bslz4", "lz4", "zstd"] = Field(
        "none", description="HDF5 filter for event arrays (bslz4: bitshuffle + LZ4, as DECTRIS writes)"
    )
    level: int | None = Field(None, description="compression level (gzip 0-9, zstd 1-22)")
    max_file_bytes: int | None = Field(
        None, ge=1, description="start a new part file once a file reaches this size (names get _partNNN)"
    )
    max_peaks: int = Field(2048, ge=1, description="peak list length in the CXI peak datasets (longer are cut)")
    data_array: str = Field("data", min_length=1, description="event array written to /entry_1/data_1/data")
    arrays: list[str] | None = Field(
        None, description="other event arrays to write (default: all) under /entry_1/data_1/<name>"
    )
    overwrite: bool = Field(False, description="replace existing files instead of refusing to start")

    @field_validator("template")
    @classmethod
    def _template_names_a_file_inside(cls, template: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{template!r}: {exc}") from None
        unknown = sorted(fields - set(TEMPLATE_FIELDS))
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(TEMPLATE_FIELDS)})")
        sample = PurePath(render_template(template, "exp", 1, "stream", "det"))
        if sample.is_absolute() or ".." in sample.parts:
            raise ValueError(f"{template!r} must name a file inside directory")
        return template

    @model_validator(mode="after")
    def _level_fits_compression(self) -> FileOptions:
        if self.level is not None:
            if self.compression not in _LEVELS:
                raise ValueError(f"level: compression {self.compression!r} has no level")
            low, high = _LEVELS[self.compression]
            if not low <= self.level <= high:
                raise ValueError(f"level: {self.compression} level must be {low}-{high}, got {self.level}")
        return self


def render_template(template: str, experiment: str, run: int, stream_id: str, detector: str) -> str:
    try:
        return template.format(experiment=experiment, run=run, stream_id=stream_id, detector=detector)
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"template {template!r}: {exc}") from None


def part_name(name: str, part: int) -> str:
    """'run.cxi', 2 -> 'run_part002.cxi'."""
    path = PurePath(name)
    return str(path.with_name(f"{path.stem}_part{part:03d}{path.suffix}"))


@registry.register
class FileHandler:
    Options: ClassVar[type[PluginOptions]] = FileOptions
    needs_bytes: ClassVar[bool] = False

    def __init__(self, options: FileOptions) -> None:
        self.options = options
        self.directory = Path(options.directory)
        self.paths: list[Path] = []  # every file written, in order
        self._writer: CxiWriter | None = None
        self._start: StartMessage | None = None
        self._calibrations: list[CalibrationMessage] = []
        self._end: EndMessage | None = None

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HandlerError(f"file: cannot create directory {self.directory}: {exc.strerror or exc}") from None
        import_h5py()

    # -- paths ----------------------------------------------------------------------------------------------
    def _path_for(self, start: StartMessage, part: int) -> Path:
        opts = self.options
        name = render_template(opts.template, start.experiment, start.run, start.stream_id, start.detector)
        if opts.max_file_bytes is not None:
            name = part_name(name, part)
        root = self.directory.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise HandlerError(f"file: output path {name!r} escapes directory {str(self.directory)!r}")
        if path.exists() and not opts.overwrite:
            raise HandlerError(f"file: {path} already exists (set overwrite: true to replace it)")
        return path

    def _open_part(self) -> CxiWriter:
        assert self._start is not None
        part = len(self.paths) + 1
        path = self._path_for(self._start, part)
        opts = self.options
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = CxiWriter(
                path,
                self._start,
                part=part,
                compression=opts.compression,
                level=opts.level,
                data_array=opts.data_array,
                arrays=frozenset(opts.arrays) if opts.arrays is not None else None,
                max_peaks=opts.max_peaks,
                overwrite=opts.overwrite,
            )
        except OSError as exc:
            raise HandlerError(f"file: cannot create {path}: {exc}") from None
        for message in self._calibrations:  # constants in force carry over into later parts
            writer.calibration(message)
        self.paths.append(path)
        return writer

    # -- messages -------------------------------------------------------------------------------------------
    def handle(self, message: Message, frames: list[Buffer] | None) -> None:
        try:
            if isinstance(message, StartMessage):
                self._close_writer()
                self._start = message
                self._writer = self._open_part()
            elif isinstance(message, Frame | FrameBatch):
                self._append([message] if isinstance(message, Frame) else message.frames)
            elif isinstance(message, CalibrationMessage):
                self._calibrations.append(message)
                if self._writer is not None:
                    self._writer.calibration(message)
            elif isinstance(message, EndMessage):
                self._end = message
                self._finish()
        except OSError as exc:
            where = self._writer.path if self._writer is not None else self.directory
            raise HandlerError(f"file: writing {where} failed: {exc}") from None

    def _append(self, frames: list[Frame]) -> None:
        if self._start is None:
            raise HandlerError("file: an event arrived before the start message")
        if self._writer is None:
            self._writer = self._open_part()
        self._writer.append(frames)
        limit = self.options.max_file_bytes
        if limit is not None and self._writer.file.id.get_filesize() >= limit:
            self._close_writer()  # the next event opens the next part

    def _finish(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.finish(self._end)
        h5py = import_h5py()
        for path in self.paths:
            if writer is not None and path == writer.path:
                continue
            with h5py.File(path, "a") as h5file:
                record_end(h5file, self._end)
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def close(self) -> None:
        try:
            self._close_writer()
        except OSError as exc:
            raise HandlerError(f"file: closing {self.paths[-1]} failed: {exc}") from None
