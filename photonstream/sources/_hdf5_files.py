"""HDF5 helpers shared by the ``hdf5`` and ``hdf5-follow`` sources: files, layouts, links, geometry, masks.

Layouts:
- ``cxi``: frames in ``/entry_1/data_1/data``; geometry under ``/entry_1/instrument_1`` (SI units, energy
  in J).
- ``nxmx``: NeXus NXmx as DECTRIS writes it: ``/entry/data/data_000001``, ``data_000002``... (usually external
  links into ``..._data_00000N.h5:/entry/data/data``) or a single ``/entry/data/data``; geometry under
  ``/entry/instrument/{detector,beam}`` with ``units`` attributes.
- ``path``: any dataset the configuration names; no geometry unless the config gives it.

External links are resolved here (relative to the linking file's directory) rather than left to HDF5, so
that a missing target gives one clear error naming the link and the file it points to.
"""

from __future__ import annotations

import contextlib
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from photonstream._data_root import outside_data_root
from photonstream.config.base import PluginOptions
from photonstream.errors import SourceError
from photonstream.frames import Geometry
from photonstream.sources.base import SourceInfo

Layout = Literal["auto", "cxi", "nxmx", "path"]

CXI_DATA = "/entry_1/data_1/data"
CXI_DETECTOR = "/entry_1/instrument_1/detector_1"
CXI_SOURCE = "/entry_1/instrument_1/source_1"
NXMX_DATA_GROUP = "/entry/data"
NXMX_DETECTOR = "/entry/instrument/detector"
NXMX_BEAM = "/entry/instrument/beam"
_NXMX_BLOCK = re.compile(r"^data_\d{6}$")

JOULE_PER_EV = 1.602176634e-19
HC_EV_M = 1.239841984e-6  # h*c in eV*m: E[eV] = HC_EV_M / wavelength[m]

_LENGTH_UNITS = {
    "m": 1.0,
    "meter": 1.0,
    "metre": 1.0,
    "cm": 1e-2,
    "mm": 1e-3,
    "millimeter": 1e-3,
    "um": 1e-6,
    "µm": 1e-6,
    "micron": 1e-6,
    "micrometer": 1e-6,
    "nm": 1e-9,
    "angstrom": 1e-10,
    "a": 1e-10,
    "å": 1e-10,
}
_ENERGY_UNITS_EV = {"ev": 1.0, "kev": 1e3, "j": 1.0 / JOULE_PER_EV}


def import_h5py() -> Any:
    """h5py with the hdf5plugin filters (bitshuffle/LZ4, LZ4, Zstd...) registered."""
    import h5py
    import hdf5plugin  # noqa: F401  (importing registers the compression filters with HDF5)

    return h5py


def expand_files(patterns: list[str], plugin: str) -> list[Path]:
    """Each entry is a path or a glob pattern (sorted matches); order of entries is kept."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise SourceError(f"{plugin}: no files match {pattern!r}")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(pattern))
    return paths


def try_open(path: Path) -> tuple[Any, bool]:
    """Open read-only; a file a writer holds in SWMR mode opens only as a SWMR reader. -> (file, swmr)"""
    h5py = import_h5py()
    try:
        return h5py.File(str(path), "r"), False
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise
    return h5py.File(str(path), "r", swmr=True), True


def open_h5(path: Path, plugin: str) -> tuple[Any, bool]:
    """``try_open``, or one SourceError line saying why the file cannot be read."""
    if (outside := outside_data_root(path)) is not None:
        raise SourceError(f"{plugin}: {outside}")
    h5py = import_h5py()
    if not path.exists():
        raise SourceError(f"{plugin}: {path}: no such file")
    if path.is_dir():
        raise SourceError(f"{plugin}: {path}: is a directory, not an HDF5 file")
    if not h5py.is_hdf5(str(path)):
        raise SourceError(f"{plugin}: {path}: not an HDF5 file")
    try:
        return try_open(path)
    except OSError as exc:
        raise SourceError(f"{plugin}: {path}: cannot open ({exc})") from None


def list_datasets(h5file: Any, limit: int = 12) -> str:
    """The datasets a file holds, as 'path shape dtype' (external links as 'path -> file:path'), for error
    messages; arrays of 2+ dimensions and links first."""
    h5py = import_h5py()
    found: list[tuple[int, str]] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.append((0, f"/{name} -> {link.filename}:{link.path}"))
        elif isinstance(link, h5py.HardLink):
            obj = h5file.get(name)
            if isinstance(obj, h5py.Dataset):
                found.append((0 if len(obj.shape) >= 2 else 1, f"/{name} {tuple(obj.shape)} {obj.dtype}"))

    with contextlib.suppress(KeyError, OSError):  # an unreadable object stops the walk; report what was seen
        h5file.visititems_links(visit)
    if not found:
        return "none"
    found.sort()
    names = [text for _, text in found[:limit]]
    more = f", ... ({len(found) - limit} more)" if len(found) > limit else ""
    return ", ".join(names) + more


@dataclass
class RunFile:
    """One opened input file plus the files its external links opened; ``close`` closes them all."""

    path: Path
    handle: Any
    plugin: str
    swmr: bool = False
    linked: dict[Path, Any] = field(default_factory=dict)

    def close(self) -> None:
        for h in self.linked.values():
            h.close()
        self.linked.clear()
        self.handle.close()

    def _missing(self, path: str, where: str = "") -> SourceError:
        return SourceError(
            f"{self.plugin}: {self.path}: no dataset {path!r}{where}; datasets found: {list_datasets(self.handle)}"
        )

    def dataset(self, path: str) -> Any:
        """The dataset at ``path``, following soft and external links; a SourceError names what is missing."""
        h5py = import_h5py()
        return self._resolve(self.handle, self.path, path, h5py, depth=0)

    def _resolve(self, h5file: Any, file_path: Path, path: str, h5py: Any, depth: int) -> Any:
        if depth > 8:
            raise SourceError(f"{self.plugin}: {file_path}: too many nested links at {path!r}")
        try:
            link = h5file.get(path, getlink=True)
        except (KeyError, OSError):
            link = None
        if link is None:
            if h5file is self.handle:
                raise self._missing(path)
            raise SourceError(
                f"{self.plugin}: {self.path}: linked file {file_path} has no dataset {path!r}; "
                f"datasets found: {list_datasets(h5file)}"
            )
        if isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            if not target.is_absolute():
                target = file_path.parent / target
            if (outside := outside_data_root(target)) is not None:
                raise SourceError(f"{self.plugin}: {file_path}: external link {path!r} -> {outside}")
            if not target.exists():
                raise SourceError(
                    f"{self.plugin}: {file_path}: broken external link {path!r} -> "
                    f"'{link.filename}:{link.path}' (file {target} does not exist)"
                )
            linked = self.linked.get(target)
            if linked is None:
                try:
                    linked, _ = try_open(target)
                except OSError as exc:
                    raise SourceError(
                        f"{self.plugin}: {file_path}: external link {path!r} -> {target}: cannot open ({exc})"
                    ) from None
                self.linked[target] = linked
            return self._resolve(linked, target, link.path, h5py, depth + 1)
        if isinstance(link, h5py.SoftLink):
            return self._resolve(h5file, file_path, link.path, h5py, depth + 1)
        obj = h5file[path]
        if not isinstance(obj, h5py.Dataset):
            raise SourceError(f"{self.plugin}: {file_path}: {path!r} is a group, not a dataset")
        self._check_storage(obj, file_path, path)
        return obj

    def _check_storage(self, dataset: Any, file_path: Path, path: str) -> None:
        """A virtual dataset or external raw storage makes HDF5 itself open other files: they must be readable
        too (``$PHOTONSTREAM_DATA_ROOT``). Relative names are checked against the file's directory and the
        current one, where HDF5 may look for them."""
        names = [source.file_name for source in dataset.virtual_sources()] if dataset.is_virtual else []
        names += [str(entry[0]) for entry in dataset.external or []]
        for name in names:
            candidates = [Path(name)] if Path(name).is_absolute() else [file_path.parent / name, Path.cwd() / name]
            for target in candidates if name != "." else []:  # "." is the dataset's own file
                if (outside := outside_data_root(target)) is not None:
                    raise SourceError(f"{self.plugin}: {file_path}: dataset {path!r} reads {outside}")

    def has(self, path: str) -> bool:
        try:
            return self.handle.get(path, getlink=True) is not None
        except (KeyError, OSError):
            return False


def open_run_file(path: Path, plugin: str) -> RunFile:
    handle, swmr = open_h5(path, plugin)
    return RunFile(path=path, handle=handle, plugin=plugin, swmr=swmr)


def detect_layout(run_file: RunFile, layout: Layout) -> Literal["cxi", "nxmx", "path"]:
    if layout != "auto":
        return layout
    if run_file.has(CXI_DATA):
        return "cxi"
    if run_file.has(NXMX_DATA_GROUP):
        return "nxmx"
    raise SourceError(
        f"{run_file.plugin}: {run_file.path}: neither CXI ({CXI_DATA}) nor NXmx "
        f"({NXMX_DATA_GROUP}/data_000001) layout; set layout: path and dataset: <path>; "
        f"datasets found: {list_datasets(run_file.handle)}"
    )


def data_paths(run_file: RunFile, layout: Literal["cxi", "nxmx", "path"], dataset: str | None) -> list[str]:
    """The dataset paths holding this file's frames, in event order (NXmx may split them over several)."""
    if dataset is not None:
        return [dataset]
    if layout == "cxi":
        return [CXI_DATA]
    if layout == "nxmx":
        group = run_file.handle.get(NXMX_DATA_GROUP)
        if group is None or not hasattr(group, "keys"):
            raise run_file._missing(f"{NXMX_DATA_GROUP}/data_000001")
        blocks = sorted(name for name in group if _NXMX_BLOCK.match(name))
        if blocks:
            return [f"{NXMX_DATA_GROUP}/{name}" for name in blocks]
        if "data" in group:
            return [f"{NXMX_DATA_GROUP}/data"]
        raise run_file._missing(f"{NXMX_DATA_GROUP}/data_000001")
    raise SourceError(f"{run_file.plugin}: layout 'path' needs the 'dataset' option")


def check_frames_dataset(ds: Any, run_file: RunFile, path: str) -> None:
    if len(ds.shape) < 2:
        raise SourceError(
            f"{run_file.plugin}: {run_file.path}: {path!r} has shape {tuple(ds.shape)}; "
            "expected (events, ...) with at least 2 dimensions"
        )


# -- geometry ------------------------------------------------------------------------------------------------
def _units(ds: Any) -> str:
    raw = ds.attrs.get("units", b"")
    if isinstance(raw, np.ndarray):
        raw = raw.flat[0] if raw.size else b""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return text.strip().lower()


def _scalar(run_file: RunFile, path: str) -> tuple[float, str] | None:
    """A dataset's value as a float (a per-event array's mean) and its units; None if absent/unreadable."""
    if not run_file.has(path):
        return None
    try:
        ds = run_file.dataset(path)
        value = np.asarray(ds[()], dtype=np.float64)
    except (SourceError, TypeError, ValueError, OSError):
        return None
    if value.size == 0 or not np.all(np.isfinite(value)):
        return None
    return float(value.mean()), _units(ds)


def _length_m(found: tuple[float, str] | None, default_unit: str) -> float | None:
    if found is None:
        return None
    value, unit = found
    return value * _LENGTH_UNITS.get(unit or default_unit, _LENGTH_UNITS[default_unit])


def read_geometry(run_file: RunFile, layout: str) -> dict[str, Any]:
    """Geometry fields the file states, in ``Geometry`` units; absent fields are left out."""
    out: dict[str, Any] = {}
    if layout == "nxmx":
        pixel = _length_m(_scalar(run_file, f"{NXMX_DETECTOR}/x_pixel_size"), "m")
        distance = _length_m(_scalar(run_file, f"{NXMX_DETECTOR}/detector_distance"), "m")
        wavelength = _length_m(_scalar(run_file, f"{NXMX_BEAM}/incident_wavelength"), "angstrom")
        energy = HC_EV_M / wavelength if wavelength else None
        centre_paths = (f"{NXMX_DETECTOR}/beam_center_x", f"{NXMX_DETECTOR}/beam_center_y")
    elif layout == "cxi":
        pixel = _length_m(_scalar(run_file, f"{CXI_DETECTOR}/x_pixel_size"), "m")
        distance = _length_m(_scalar(run_file, f"{CXI_DETECTOR}/distance"), "m")
        found = _scalar(run_file, f"{CXI_SOURCE}/energy")
        energy = found[0] * _ENERGY_UNITS_EV.get(found[1] or "j", _ENERGY_UNITS_EV["j"]) if found else None
        centre_paths = (f"{CXI_DETECTOR}/beam_center_x", f"{CXI_DETECTOR}/beam_center_y")
    else:
        return out
    cx, cy = (_scalar(run_file, p) for p in centre_paths)
    if pixel:
        out["pixel_size_m"] = pixel
    if distance:
        out["distance_m"] = distance
    if energy:
        out["photon_energy_ev"] = energy
    if cx is not None and cy is not None:
        out["beam_center_px"] = (cx[0], cy[0])
    return out


def read_detector_name(run_file: RunFile, layout: str) -> str:
    path = {"nxmx": f"{NXMX_DETECTOR}/description", "cxi": f"{CXI_DETECTOR}/description"}.get(layout)
    if path is None or not run_file.has(path):
        return ""
    try:
        value = run_file.dataset(path)[()]
    except (SourceError, OSError):
        return ""
    if isinstance(value, np.ndarray):
        value = value.flat[0] if value.size else b""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def default_mask_path(layout: str) -> str | None:
    return {"nxmx": f"{NXMX_DETECTOR}/pixel_mask", "cxi": f"{CXI_DETECTOR}/mask"}.get(layout)


def read_mask(run_file: RunFile, path: str | None, frame_shape: tuple[int, ...], required: bool) -> np.ndarray | None:
    """The pixel mask at ``path`` (nonzero marks a bad pixel, as in NeXus), if present and frame-shaped."""
    if path is None:
        return None
    if not run_file.has(path):
        if required:
            raise run_file._missing(path)
        return None
    mask = np.asarray(run_file.dataset(path)[()])
    if mask.shape != frame_shape:
        if required:
            raise SourceError(
                f"{run_file.plugin}: {run_file.path}: mask {path!r} has shape {mask.shape}, frames are {frame_shape}"
            )
        return None
    return mask


def geometry_overrides(options: Any) -> dict[str, Any]:
    """Geometry fields set in the source's options (they win over the file)."""
    out: dict[str, Any] = {}
    for name in ("pixel_size_m", "distance_m", "photon_energy_ev"):
        value = getattr(options, name)
        if value is not None:
            out[name] = float(value)
    if options.beam_center_px is not None:
        out["beam_center_px"] = (float(options.beam_center_px[0]), float(options.beam_center_px[1]))
    return out


def event_value(value: Any) -> Any:
    """One event's entry of an extra dataset: Python scalars for scalars, arrays otherwise."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- options shared by hdf5 and hdf5-follow ------------------------------------------------------------------
class Hdf5ReadOptions(PluginOptions):
    """What both HDF5 sources need to find frames and geometry in a file."""

    layout: Layout = Field("auto", description="file layout: auto (detect CXI or NXmx), cxi, nxmx, or path")
    dataset: str | None = Field(
        None, description="dataset holding the frames (events first); required for layout 'path'"
    )
    array: str = Field("data", min_length=1, description="name of the frame array in each event")
    detector: str | None = Field(None, description="detector name (default: the file's detector description)")
    pixel_size_m: float | None = Field(None, gt=0, description="override the file's pixel size (m)")
    distance_m: float | None = Field(None, gt=0, description="override the file's detector distance (m)")
    beam_center_px: tuple[float, float] | None = Field(None, description="override the beam centre (x, y) in pixels")
    photon_energy_ev: float | None = Field(None, gt=0, description="override the file's photon energy (eV)")
    read_mask: bool = Field(True, description="send the file's pixel mask (nonzero = bad) in the start message")
    mask_dataset: str | None = Field(None, description="dataset holding the pixel mask (default: the layout's)")

    @model_validator(mode="after")
    def _path_layout_needs_dataset(self) -> Hdf5ReadOptions:
        if self.layout == "path" and not self.dataset:
            raise ValueError("layout 'path' needs the 'dataset' option")
        return self


def describe(
    run_file: RunFile, layout: str, options: Hdf5ReadOptions, frame_shape: tuple[int, ...], dtype: Any
) -> SourceInfo:
    """The start-message facts of a run from its first file, with the options' geometry overrides applied."""
    from_file = read_geometry(run_file, layout)
    overrides = geometry_overrides(options)
    geometry = Geometry(**{**from_file, **overrides, "detector_shape": frame_shape})
    arrays: dict[str, np.ndarray] = {}
    if options.read_mask:
        explicit = options.mask_dataset is not None
        mask = read_mask(run_file, options.mask_dataset or default_mask_path(layout), frame_shape, explicit)
        if mask is not None:
            arrays["mask"] = mask
    details = {
        "layout": layout,
        "first_file": str(run_file.path),
        "dtype": np.dtype(dtype).str,
        "geometry_from_file": sorted(from_file),
        "geometry_from_config": sorted(overrides),
    }
    if "mask" in arrays:
        details["mask_convention"] = "nonzero marks a bad pixel"
    return SourceInfo(
        detector=options.detector or read_detector_name(run_file, layout),
        geometry=geometry,
        arrays=arrays,
        details=details,
    )
