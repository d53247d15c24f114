"""The ``hdf5`` source on master files laid out as the DECTRIS EIGER filewriter writes them (legacy NXmx).

A master file with ``/entry/data/data_00000N`` external links to bitshuffle/LZ4 data files and the detector's
configuration under ``/entry/instrument/detector/detectorSpecific``: with no option set, the source sends the
pixel mask, the flatfield and count-rate lookup table (calibration ``detector``) and the Stream V2 start fields.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.sources.hdf5 import Hdf5Options, Hdf5Source
from photonstream.sources.hdf5_follow import Hdf5FollowOptions, Hdf5FollowSource

SHAPE = (12, 10)  # (y, x) pixels
DETECTOR = "/entry/instrument/detector"
SPECIFIC = f"{DETECTOR}/detectorSpecific"
MASK = (np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE) % 7 == 0).astype(np.uint32)
MASK[0, :] = 2  # gap-like row, another mask bit
FLATFIELD = np.linspace(0.9, 1.1, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
LOOKUP = np.minimum(np.arange(4096, dtype=np.uint32) * 11 // 10, 4094).astype(np.uint32)
NIMAGES, NTRIGGER = 3, 3  # 9 images in all: 5 in the first data file, 4 in the second


def frames(n: int, seed: int, dtype: str) -> np.ndarray:
    top = 60000 if dtype == "<u2" else 2_000_000
    return np.random.default_rng(seed).integers(0, top, size=(n, *SHAPE)).astype(dtype)


def scalar(group: h5py.Group, name: str, value: object, dtype: str | None = None, units: str | None = None) -> None:
    group.create_dataset(name, data=value, dtype=dtype)
    if units is not None:
        group[name].attrs["units"] = np.bytes_(units)


def write_master(
    directory: Path,
    blocks: list[np.ndarray],
    *,
    thickness: tuple[float, str] = (4.5e-4, "m"),
    lookup: str = "detectorSpecific",
    specific: bool = True,
    nxmx_mask: bool = False,
) -> Path:
    """A master file + one data file per block, as the filewriter lays them out."""
    master = directory / "series_7_master.h5"
    bits = 8 * blocks[0].dtype.itemsize
    with h5py.File(master, "w") as f:
        for i, block in enumerate(blocks, start=1):
            name = f"series_7_data_{i:06d}.h5"
            with h5py.File(directory / name, "w") as df:
                ds = df.create_dataset(
                    "/entry/data/data", data=block, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4")
                )
                ds.attrs["image_nr_low"] = np.uint64(1 + sum(len(b) for b in blocks[: i - 1]))
                ds.attrs["image_nr_high"] = np.uint64(sum(len(b) for b in blocks[:i]))
            f[f"/entry/data/data_{i:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        det = f.require_group(DETECTOR)
        scalar(det, "description", np.bytes_(b"Dectris EIGER2 Si 4M"))
        scalar(det, "detector_number", np.bytes_(b"E-08-0123"))
        scalar(det, "sensor_material", np.bytes_(b"Si"))
        scalar(det, "sensor_thickness", thickness[0], "f4", thickness[1])
        scalar(det, "count_time", 0.0099999, "f4", "s")
        scalar(det, "frame_time", 0.01, "f4", "s")
        scalar(det, "threshold_energy", 6050.0, "f4", "eV")
        scalar(det, "bit_depth_image", bits, "u4")
        scalar(det, "bit_depth_readout", 16 if bits == 16 else 12, "u4")
        scalar(det, "beam_center_x", 4.5, "f4", "pixel")
        scalar(det, "beam_center_y", 6.25, "f4", "pixel")
        scalar(det, "detector_distance", 0.12, "f4", "m")
        scalar(det, "x_pixel_size", 7.5e-5, "f4", "m")
        scalar(det, "y_pixel_size", 7.5e-5, "f4", "m")
        scalar(det, "countrate_correction_applied", 1, "u1")
        scalar(det, "flatfield_correction_applied", 1, "u1")
        scalar(det, "pixel_mask_applied", 0, "u1")
        scalar(det, "virtual_pixel_correction_applied", 1, "u1")
        scalar(f.require_group("/entry/instrument/beam"), "incident_wavelength", 1.0332, "f4", "angstrom")
        if nxmx_mask:
            det["pixel_mask"] = np.zeros(SHAPE, np.uint32)
        if not specific:
            return master
        ds = f.require_group(SPECIFIC)
        ds["pixel_mask"] = MASK
        ds["flatfield"] = FLATFIELD
        scalar(ds, "nimages", NIMAGES, "u8")
        scalar(ds, "ntrigger", NTRIGGER, "u8")
        scalar(ds, "countrate_correction_count_cutoff", 2**bits - 3 if bits == 16 else 1_000_000, "u4")
        scalar(ds, "eiger_fw_version", np.bytes_(b"release-2022.1.2"))
        scalar(ds, "software_version", np.bytes_(b"1.8.0"))
        scalar(ds, "compression", np.bytes_(b"bslz4"))
        scalar(ds, "x_pixels_in_detector", SHAPE[1], "u4")
        scalar(ds, "y_pixels_in_detector", SHAPE[0], "u4")
        scalar(ds, "photon_energy", 12000.0, "f4", "eV")
        scalar(ds, "data_collection_date", np.bytes_(b"2024-05-01T10:00:00.000+02:00"))
        ds["countrate_correction_table"] = np.stack([np.arange(8.0), np.arange(8.0) * 1.1])  # rank 2: not the LUT
        if lookup == "detectorSpecific":
            ds["countrate_correction_lookup_table"] = LOOKUP
        for module in range(2):  # EIGER1 keeps tables per module
            group = ds.require_group(f"detectorModule_{module:03d}")
            group["countrate_correction_table"] = ds["countrate_correction_table"][()]
            if lookup in ("modules", "modules differ"):
                table = LOOKUP if lookup == "modules" or module == 0 else LOOKUP + 1
                group["countrate_correction_lookup_table"] = table
    return master


def read_all(**options: object) -> tuple[object, list]:
    source = Hdf5Source(Hdf5Options(**options))
    info = source.open()
    try:
        return info, list(source.events())
    finally:
        source.close()


@pytest.mark.parametrize("dtype", ["<u2", "<u4"])
@pytest.mark.parametrize("thickness", [(4.5e-4, "m"), (450.0, "um")])
def test_filewriter_master_without_options(tmp_path: Path, dtype: str, thickness: tuple[float, str]) -> None:
    blocks = [frames(5, seed=1, dtype=dtype), frames(4, seed=2, dtype=dtype)]
    master = write_master(tmp_path, blocks, thickness=thickness)
    with h5py.File(tmp_path / "series_7_data_000001.h5") as f:  # really bitshuffle-compressed, as on the detector
        assert "32008" in f["/entry/data/data"]._filters
    info, events = read_all(files=[str(master)], read_events=4)

    np.testing.assert_array_equal(info.arrays["mask"], MASK)
    assert info.details["mask_convention"] == "nonzero marks a bad pixel"
    assert info.calibration.identifier == "detector"
    assert sorted(info.calibration.arrays) == ["countrate_correction_lookup_table", "flatfield_data"]
    np.testing.assert_array_equal(info.calibration.arrays["flatfield_data"], FLATFIELD)
    assert info.calibration.arrays["flatfield_data"].dtype == np.float32
    np.testing.assert_array_equal(info.calibration.arrays["countrate_correction_lookup_table"], LOOKUP)

    bits = 16 if dtype == "<u2" else 32
    expected = {
        "detector_serial_number": "E-08-0123",
        "sensor_material": "Si",
        "sensor_thickness": pytest.approx(4.5e-4, rel=1e-6),
        "threshold_energy": {"data": 6050.0},
        "count_time": pytest.approx(0.0099999, rel=1e-6),
        "frame_time": pytest.approx(0.01, rel=1e-6),
        "saturation_value": 2**16 - 3 if bits == 16 else 1_000_000,
        "number_of_images": NIMAGES * NTRIGGER,
        "flatfield_enabled": True,
        "countrate_correction_enabled": True,
        "pixel_mask_enabled": False,
        "virtual_pixel_interpolation_enabled": True,
        "image_dtype": f"uint{bits}",
        "bit_depth_image": bits,
    }
    types = {"threshold_energy": dict, "detector_serial_number": str, "sensor_material": str, "image_dtype": str}
    types.update(dict.fromkeys(("sensor_thickness", "count_time", "frame_time"), float))
    types.update(dict.fromkeys(("saturation_value", "number_of_images", "bit_depth_image"), int))
    types.update(dict.fromkeys((k for k in expected if k.endswith("_enabled")), bool))
    for name, value in expected.items():
        assert info.details[name] == value, name
        assert type(info.details[name]) is types[name], name
    assert type(info.details["threshold_energy"]["data"]) is float

    assert info.detector == "Dectris EIGER2 Si 4M"
    assert info.geometry.detector_shape == SHAPE
    assert info.geometry.pixel_size_m == pytest.approx(7.5e-5)
    assert info.geometry.beam_center_px == pytest.approx((4.5, 6.25))
    run = np.concatenate(blocks)
    assert info.expected_events == len(run) == info.details["number_of_images"]
    assert [e.event for e in events] == list(range(len(run)))
    for event in events:  # bit-exact, dtype and byte order kept
        assert event.arrays["data"].dtype == run.dtype
        np.testing.assert_array_equal(event.arrays["data"], run[event.event])


def test_per_module_lookup_tables(tmp_path: Path) -> None:
    master = write_master(tmp_path, [frames(2, seed=3, dtype="<u4")], lookup="modules")
    info, _ = read_all(files=[str(master)])
    np.testing.assert_array_equal(info.calibration.arrays["countrate_correction_lookup_table"], LOOKUP)


def test_modules_that_disagree_give_no_lookup_table(tmp_path: Path) -> None:
    master = write_master(tmp_path, [frames(2, seed=4, dtype="<u4")], lookup="modules differ")
    info, _ = read_all(files=[str(master)])
    assert sorted(info.calibration.arrays) == ["flatfield_data"]  # the rank-2 countrate_correction_table is not it
    assert info.calibration.identifier == "detector"


def test_explicit_mask_dataset_wins_and_array_names_the_channel(tmp_path: Path) -> None:
    master = write_master(tmp_path, [frames(2, seed=5, dtype="<u2")])
    with h5py.File(master, "a") as f:
        f["/entry/my_mask"] = np.ones(SHAPE, np.uint8)
    info, events = read_all(files=[str(master)], mask_dataset="/entry/my_mask", array="image")
    np.testing.assert_array_equal(info.arrays["mask"], np.ones(SHAPE, np.uint8))
    assert "flatfield_image" in info.calibration.arrays
    assert info.details["threshold_energy"] == {"image": 6050.0}
    assert set(events[0].arrays) == {"image"}


def test_read_mask_false_sends_no_mask(tmp_path: Path) -> None:
    master = write_master(tmp_path, [frames(2, seed=6, dtype="<u2")])
    info, _ = read_all(files=[str(master)], read_mask=False)
    assert "mask" not in info.arrays
    assert info.calibration.identifier == "detector"


def test_missing_and_odd_metadata_never_fail(tmp_path: Path) -> None:
    master = write_master(tmp_path, [frames(3, seed=7, dtype="<u2")])
    with h5py.File(master, "a") as f:
        for name in ("detector_number", "count_time", "threshold_energy", "pixel_mask_applied"):
            del f[f"{DETECTOR}/{name}"]
        for name in ("ntrigger", "flatfield", "countrate_correction_lookup_table"):
            del f[f"{SPECIFIC}/{name}"]
        f[f"{DETECTOR}/frame_time"].attrs["units"] = np.bytes_("fortnights")  # unknown unit: left out
        del f[f"{SPECIFIC}/pixel_mask"]
        f[f"{SPECIFIC}/pixel_mask"] = np.zeros((3, 3), np.uint32)  # not frame-shaped: left out
    info, events = read_all(files=[str(master)])
    assert len(events) == 3
    assert "mask" not in info.arrays
    assert info.calibration.identifier == "none" and not info.calibration.arrays
    for name in ("detector_serial_number", "count_time", "frame_time", "threshold_energy", "pixel_mask_enabled"):
        assert name not in info.details
    assert info.details["number_of_images"] == NIMAGES  # no ntrigger: one trigger
    assert info.details["sensor_material"] == "Si"


def test_file_without_detector_specific_opens_as_before(tmp_path: Path) -> None:
    blocks = [frames(3, seed=8, dtype="<u2")]
    master = write_master(tmp_path, blocks, specific=False, nxmx_mask=True)
    info, events = read_all(files=[str(master)])
    np.testing.assert_array_equal(info.arrays["mask"], np.zeros(SHAPE, np.uint32))  # the NXmx path, as before
    assert info.calibration.identifier == "none" and not info.calibration.arrays
    assert set(info.details) == {
        "layout",
        "first_file",
        "dtype",
        "geometry_from_file",
        "geometry_from_config",
        "mask_convention",
        "files",
        "run_events",
        "selected_events",
    }
    np.testing.assert_array_equal(np.stack([e.arrays["data"] for e in events]), blocks[0])


def test_hdf5_follow_on_a_master_file(tmp_path: Path) -> None:
    blocks = [frames(3, seed=9, dtype="<u4"), frames(2, seed=10, dtype="<u4")]
    write_master(tmp_path, blocks)
    (tmp_path / "END").touch()
    source = Hdf5FollowSource(
        Hdf5FollowOptions(directory=str(tmp_path), pattern="*_master.h5", poll_interval_s=0.02, idle_timeout_s=5)
    )
    info = source.open()
    events = list(source.events())
    source.close()
    np.testing.assert_array_equal(info.arrays["mask"], MASK)
    np.testing.assert_array_equal(info.calibration.arrays["flatfield_data"], FLATFIELD)
    assert info.details["number_of_images"] == NIMAGES * NTRIGGER
    np.testing.assert_array_equal(np.stack([e.arrays["data"] for e in events]), np.concatenate(blocks))


def test_validated_config_reads_the_same(tmp_path: Path) -> None:
    master = write_master(tmp_path, [frames(2, seed=11, dtype="<u2")])
    config = validate_pipeline({"source": {"type": "hdf5", "files": str(master)}, "handlers": [{"type": "null"}]})
    source = Hdf5Source(config.source)
    info = source.open()
    source.close()
    assert info.details["detector_serial_number"] == "E-08-0123"
    assert info.calibration.identifier == "detector"
