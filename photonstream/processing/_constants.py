"""Calibration constants as options: a .npy file, an HDF5 file + dataset, a number, or a nested list.

pedestal: pedestal.npy                            # .npy file
gain: {path: calib.h5, dataset: /gain}            # HDF5 dataset
mask: [[0, 1], [0, 0]]                            # inline
pedestal: 100.0                                   # one value for every pixel
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from photonstream._data_root import outside_data_root
from photonstream.errors import ConfigError


class ConstantFile(BaseModel):
    """A constant stored in a file: ``.npy``, or an HDF5 file with the dataset's path inside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description=".npy file, or HDF5 file (then `dataset` is required)")
    dataset: str | None = Field(None, min_length=1, description="dataset path inside the HDF5 file")


def _path_to_file(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


def _numeric_inline(value: Any) -> Any:
    if isinstance(value, list):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(  # noqa: B904  (pydantic reports this message; the numpy cause adds nothing)
                "an inline constant must be a number or a nested list of numbers (same length per row)"
            )
        if array.size == 0:
            raise ValueError("an inline constant must not be empty")
    return value


Constant = Annotated[
    ConstantFile | float | list[Any],
    BeforeValidator(_path_to_file),
    AfterValidator(_numeric_inline),
]
"""A constant option: a file path, {path, dataset}, a number or a nested list of numbers."""


@dataclass(frozen=True, slots=True)
class LoadedConstant:
    array: np.ndarray
    reference: str | None  # "path" or "path::dataset" for constants read from a file; None when inline


def load_constant(spec: ConstantFile | float | list[Any], what: str) -> LoadedConstant:
    """Read one constant; ``what`` (e.g. ``calibrate.pedestal``) starts every error line."""
    if not isinstance(spec, ConstantFile):
        return LoadedConstant(np.asarray(spec, dtype=np.float64), None)
    path = Path(spec.path)
    if (outside := outside_data_root(path)) is not None:
        raise ConfigError(f"{what}: {outside}")
    if not path.is_file():
        raise ConfigError(f"{what}: file {spec.path} does not exist")
    if spec.dataset is None:
        array = _read_npy(path, what)
        reference = str(path)
    else:
        array = _read_hdf5(path, spec.dataset, what)
        reference = f"{path}::{spec.dataset}"
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{what}: {reference} holds {array.dtype} values, not numbers")
    return LoadedConstant(array, reference)


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        hint = " (for an HDF5 file give {path, dataset})" if path.suffix.lower() != ".npy" else ""
        raise ConfigError(f"{what}: {path} is not a readable .npy file{hint}: {exc}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise ConfigError(f"{what}: {path} is an .npz archive; give one .npy file")
    return array


def _read_hdf5(path: Path, dataset: str, what: str) -> np.ndarray:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters real calibration files use)

    try:
        with h5py.File(path, "r") as f:
            node = f.get(dataset)
            if not isinstance(node, h5py.Dataset):
                raise ConfigError(f"{what}: {path} has no dataset {dataset!r}")
            return np.asarray(node[()])
    except OSError as exc:
        raise ConfigError(f"{what}: {path} is not a readable HDF5 file: {exc}") from None


def fingerprint(constants: dict[str, np.ndarray]) -> str:
    """A short identifier derived from the constants: sha256 over each one's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(constants):
        array = np.ascontiguousarray(constants[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"
