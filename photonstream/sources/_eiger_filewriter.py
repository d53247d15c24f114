"""What the DECTRIS EIGER filewriter ("legacy NXmx" format) puts in a master file beyond NXmx geometry.

The filewriter keeps the detector's own configuration under ``/entry/instrument/detector/detectorSpecific``
(``pixel_mask``, ``flatfield``, ``nimages``, ``ntrigger``, ``countrate_correction_count_cutoff`` or
``saturation_value``, per-module groups ``detectorModule_NNN`` on EIGER1) and the NXmx-style scalars one
level up (``detector_number``, ``sensor_material``, ``sensor_thickness``, ``count_time``, ``frame_time``,
``threshold_energy``, ``bit_depth_image``, ``*_applied`` flags). A file with the NXmx layout and that group
gets, with no option set:

- the pixel mask (nonzero = bad) as ``SourceInfo.arrays["mask"]`` when the NXmx path holds none and no
  ``mask_dataset`` is configured;
- ``flatfield_<channel>`` and ``countrate_correction_lookup_table`` as calibration arrays (identifier
  ``detector``);
- the scalars in ``SourceInfo.details`` under the DECTRIS Stream V2 start-message names.

Everything is optional: an absent, unreadable, oddly shaped or oddly unitised field is left out, never an
error. The legacy format names no channel, so the one channel is the frame array's name (``data`` unless the
options rename it), which is what the Stream V2 serializer lists as ``channels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from photonstream.errors import SourceError
from photonstream.frames import Calibration
from photonstream.sources._hdf5_files import (
    _ENERGY_UNITS_EV,
    _LENGTH_UNITS,
    NXMX_DETECTOR,
    Hdf5ReadOptions,
    RunFile,
    _units,
    read_mask,
)
from photonstream.sources.base import SourceInfo

SPECIFIC = f"{NXMX_DETECTOR}/detectorSpecific"
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_READ_ERRORS = (SourceError, OSError, KeyError, TypeError, ValueError)

# Where each field lives, in order of preference (the first readable one is used).
SERIAL_NUMBER = (f"{NXMX_DETECTOR}/detector_number", f"{NXMX_DETECTOR}/serial_number")
SENSOR_MATERIAL = (f"{NXMX_DETECTOR}/sensor_material",)
SENSOR_THICKNESS = (f"{NXMX_DETECTOR}/sensor_thickness",)
COUNT_TIME = (f"{NXMX_DETECTOR}/count_time",)  # not frame_count_time: that is an auto-summation subframe's
FRAME_TIME = (f"{NXMX_DETECTOR}/frame_time",)
THRESHOLD_ENERGY = (f"{NXMX_DETECTOR}/threshold_energy", f"{SPECIFIC}/threshold_energy")
SATURATION_VALUE = (
    f"{NXMX_DETECTOR}/saturation_value",
    f"{SPECIFIC}/saturation_value",  # firmware >= 1.5
    f"{SPECIFIC}/countrate_correction_count_cutoff",  # firmware >= 1.4: the largest valid count
    f"{SPECIFIC}/detectorModule_000/countrate_correction_count_cutoff",  # older firmware
)
BIT_DEPTH_IMAGE = (f"{NXMX_DETECTOR}/bit_depth_image", f"{SPECIFIC}/bit_depth_image")
FLAGS = {
    "flatfield_enabled": (f"{NXMX_DETECTOR}/flatfield_correction_applied", f"{NXMX_DETECTOR}/flatfield_applied"),
    "countrate_correction_enabled": (f"{NXMX_DETECTOR}/countrate_correction_applied",),
    "pixel_mask_enabled": (f"{NXMX_DETECTOR}/pixel_mask_applied",),
    "virtual_pixel_interpolation_enabled": (
        f"{NXMX_DETECTOR}/virtual_pixel_correction_applied",
        f"{NXMX_DETECTOR}/virtual_pixel_interpolation_applied",
    ),
}
PIXEL_MASK = f"{SPECIFIC}/pixel_mask"
FLATFIELD = (f"{SPECIFIC}/flatfield", f"{NXMX_DETECTOR}/flatfield")
# The 1-d lookup table (measured count -> corrected count) that Stream V2 sends. ``countrate_correction_table``
# (rank 2, the table a Stream V1 header carries) is another thing and is not read.
LOOKUP_TABLE = (
    f"{NXMX_DETECTOR}/countrate_correction_lookup_table",
    f"{SPECIFIC}/countrate_correction_lookup_table",
    f"{SPECIFIC}/countrate_correction_lookuptable",
)
MODULE_LOOKUP_TABLE = "countrate_correction_lookup_table"  # in each detectorSpecific/detectorModule_NNN (EIGER1)


def has_detector_specific(run_file: RunFile) -> bool:
    try:
        group = run_file.handle.get(SPECIFIC)
    except _READ_ERRORS:
        return False
    return group is not None and hasattr(group, "keys")


def _value(run_file: RunFile, path: str) -> tuple[np.ndarray, str] | None:
    """The dataset's value as an array and its units attribute; None when absent or unreadable."""
    if not run_file.has(path):
        return None
    try:
        ds = run_file.dataset(path)
        return np.asarray(ds[()]), _units(ds)
    except _READ_ERRORS:
        return None


def _first(run_file: RunFile, paths: tuple[str, ...]) -> tuple[np.ndarray, str] | None:
    for path in paths:
        if (found := _value(run_file, path)) is not None:
            return found
    return None


def _one(value: np.ndarray) -> Any:
    """The single value a scalar (or all-equal per-image) dataset holds, as a numpy scalar; None otherwise."""
    if value.size == 0:
        return None
    flat = value.reshape(-1)
    if value.dtype.kind not in "SUO" and not np.all(flat == flat[0]):
        return None
    return flat[0]


def _text(run_file: RunFile, paths: tuple[str, ...]) -> str | None:
    found = _first(run_file, paths)
    value = None if found is None else _one(found[0])
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    text = text.rstrip("\x00").strip()
    return text or None


def _number(run_file: RunFile, paths: tuple[str, ...], units: dict[str, float], default: str) -> float | None:
    """A float in the table's base unit, scaled by the units attribute; None for an unknown unit."""
    found = _first(run_file, paths)
    if found is None or found[0].dtype.kind not in "iuf":
        return None
    value, unit = _one(found[0]), found[1] or default
    if value is None or unit not in units or not np.isfinite(value):
        return None
    return float(value) * units[unit]


def _integer(run_file: RunFile, paths: tuple[str, ...]) -> int | None:
    found = _first(run_file, paths)
    if found is None or found[0].dtype.kind not in "iuf":
        return None
    value = _one(found[0])
    if value is None or not np.isfinite(value) or float(value) != int(value):
        return None
    return int(value)


def _flag(run_file: RunFile, paths: tuple[str, ...]) -> bool | None:
    found = _first(run_file, paths)
    if found is None or found[0].dtype.kind not in "biuf":
        return None
    value = _one(found[0])
    return None if value is None else bool(value)


def _image_dtype(dtype: Any) -> str | None:
    dt = np.dtype(dtype)
    return f"uint{8 * dt.itemsize}" if dt.kind == "u" and dt.itemsize in (1, 2, 4) else None


def read_details(run_file: RunFile, channel: str, dtype: Any) -> dict[str, Any]:
    """The Stream V2 start-message fields the file states (absent ones are left out)."""
    out: dict[str, Any] = {}
    for name, paths in (("detector_serial_number", SERIAL_NUMBER), ("sensor_material", SENSOR_MATERIAL)):
        if (text := _text(run_file, paths)) is not None:
            out[name] = text
    for name, paths, units, default in (
        ("sensor_thickness", SENSOR_THICKNESS, _LENGTH_UNITS, "m"),
        ("count_time", COUNT_TIME, _TIME_UNITS, "s"),
        ("frame_time", FRAME_TIME, _TIME_UNITS, "s"),
    ):
        if (number := _number(run_file, paths, units, default)) is not None:
            out[name] = number
    if (energy := _number(run_file, THRESHOLD_ENERGY, _ENERGY_UNITS_EV, "ev")) is not None:
        out["threshold_energy"] = {channel: energy}
    if (saturation := _integer(run_file, SATURATION_VALUE)) is not None:
        out["saturation_value"] = saturation
    nimages = _integer(run_file, (f"{SPECIFIC}/nimages",))
    if nimages is not None:
        ntrigger = _integer(run_file, (f"{SPECIFIC}/ntrigger",))
        out["number_of_images"] = nimages * (ntrigger if ntrigger is not None and ntrigger > 0 else 1)
    for name, paths in FLAGS.items():
        if (flag := _flag(run_file, paths)) is not None:
            out[name] = flag
    if (image_dtype := _image_dtype(dtype)) is not None:
        out["image_dtype"] = image_dtype
    if (bits := _integer(run_file, BIT_DEPTH_IMAGE)) is not None:
        out["bit_depth_image"] = bits
    return out


def _array(run_file: RunFile, path: str, ndim: int, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    found = _value(run_file, path)
    if found is None:
        return None
    array = found[0]
    if array.ndim != ndim or array.size == 0 or array.dtype.kind not in "biuf":
        return None
    return array if shape is None or array.shape == shape else None


def _module_lookup_table(run_file: RunFile) -> np.ndarray | None:
    """EIGER1 files keep one table per module; they are used only when every module's table is the same."""
    try:
        group = run_file.handle.get(SPECIFIC)
        modules = sorted(name for name in group if name.startswith("detectorModule_"))
    except _READ_ERRORS:
        return None
    tables = [_array(run_file, f"{SPECIFIC}/{name}/{MODULE_LOOKUP_TABLE}", 1) for name in modules]
    if not tables or any(t is None for t in tables):
        return None
    first = tables[0]
    assert first is not None
    return first if all(np.array_equal(first, t) for t in tables[1:]) else None


def read_calibration(run_file: RunFile, channel: str, frame_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in FLATFIELD:
        if (flatfield := _array(run_file, path, len(frame_shape), frame_shape)) is not None:
            out[f"flatfield_{channel}"] = flatfield
            break
    table = next((t for p in LOOKUP_TABLE if (t := _array(run_file, p, 1)) is not None), None)
    if table is None:
        table = _module_lookup_table(run_file)
    if table is not None:
        out["countrate_correction_lookup_table"] = table
    return out


def add_filewriter_facts(
    info: SourceInfo, run_file: RunFile, layout: str, options: Hdf5ReadOptions, frame_shape: tuple[int, ...], dtype: Any
) -> None:
    """Add the mask, calibration arrays and Stream V2 details of an EIGER filewriter master file to ``info``
    (``describe``'s result for the same file); files without ``detectorSpecific`` are left as they are."""
    if layout != "nxmx" or not has_detector_specific(run_file):
        return
    channel = options.array
    if options.read_mask and options.mask_dataset is None and "mask" not in info.arrays:
        try:
            mask = read_mask(run_file, PIXEL_MASK, frame_shape, required=False)
        except _READ_ERRORS:
            mask = None
        if mask is not None:
            info.arrays["mask"] = mask
            info.details["mask_convention"] = "nonzero marks a bad pixel"
    calibration = read_calibration(run_file, channel, frame_shape)
    if calibration:
        previous = info.calibration
        info.calibration = Calibration(
            identifier="detector",
            version=previous.version,
            arrays={**previous.arrays, **calibration},
            references=dict(previous.references),
        )
    info.details.update(read_details(run_file, channel, dtype))
