"""The ``hdf5`` source on CXI, NXmx (master + bitshuffle external-link data files) and plain-path files."""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError, SourceError
from photonstream.pipeline import Pipeline
from photonstream.sources._hdf5_files import HC_EV_M, JOULE_PER_EV
from photonstream.sources.base import Shard
from photonstream.sources.hdf5 import Hdf5Options, Hdf5Source

FRAME_SHAPE = (8, 6)


def frames(n: int, seed: int, dtype: str = "<u2") -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=(n, *FRAME_SHAPE)).astype(dtype)


def write_cxi(path: Path, data: np.ndarray, energy_ev: float = 9000.0) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=data, chunks=(1, *data.shape[1:]))
        det = f.create_group("/entry_1/instrument_1/detector_1")
        det["x_pixel_size"] = 75e-6
        det["distance"] = 0.125
        det["beam_center_x"] = 3.5
        det["beam_center_y"] = 4.25
        det["description"] = "test-jungfrau"
        det["mask"] = np.eye(*data.shape[1:], dtype=np.uint8)
        f["/entry_1/instrument_1/source_1/energy"] = energy_ev * JOULE_PER_EV
        f["/entry_1/result_1/photon_energy_ev"] = np.linspace(energy_ev, energy_ev + 10, len(data))
        f["/entry_1/result_1/timestamp"] = 1.7e9 + np.arange(len(data)) * 0.5
        f["/entry_1/result_1/spectrum"] = np.arange(len(data) * 4, dtype=np.float32).reshape(len(data), 4)


def write_nxmx(directory: Path, blocks: list[np.ndarray], missing_block: bool = False) -> Path:
    """A DECTRIS-style master file whose data_00000N are external links to bitshuffle-compressed data files."""
    master = directory / "series_master.h5"
    with h5py.File(master, "w") as f:
        for i, block in enumerate(blocks, start=1):
            data_name = f"series_data_{i:06d}.h5"
            with h5py.File(directory / data_name, "w") as df:
                df.create_dataset(
                    "/entry/data/data",
                    data=block,
                    chunks=(1, *block.shape[1:]),
                    **hdf5plugin.Bitshuffle(cname="lz4"),
                )
            f[f"/entry/data/data_{i:06d}"] = h5py.ExternalLink(data_name, "/entry/data/data")
        if missing_block:
            f[f"/entry/data/data_{len(blocks) + 1:06d}"] = h5py.ExternalLink("gone.h5", "/entry/data/data")
        det = f.create_group("/entry/instrument/detector")
        det["x_pixel_size"] = 75.0
        det["x_pixel_size"].attrs["units"] = "um"
        det["detector_distance"] = 0.2
        det["detector_distance"].attrs["units"] = "m"
        det["beam_center_x"] = 2.0
        det["beam_center_y"] = 3.0
        det["description"] = np.bytes_(b"Dectris EIGER2 Si 16M")
        det["pixel_mask"] = np.arange(np.prod(FRAME_SHAPE), dtype=np.uint32).reshape(FRAME_SHAPE) % 3
        f["/entry/instrument/beam/incident_wavelength"] = 1.0
        f["/entry/instrument/beam/incident_wavelength"].attrs["units"] = "angstrom"
    return master


def read_all(**options: object) -> tuple[Hdf5Source, list]:
    source = Hdf5Source(Hdf5Options(**options))
    info = source.open()
    try:
        events = list(source.events())
    finally:
        source.close()
    return source, [info, events]


def test_cxi_frames_geometry_mask_and_extras(tmp_path: Path) -> None:
    data = frames(10, seed=1)
    write_cxi(tmp_path / "run.cxi", data, energy_ev=9000.0)
    _, (info, events) = read_all(
        files=[str(tmp_path / "run.cxi")],
        read_events=4,
        metadata={"photon_energy_ev": "/entry_1/result_1/photon_energy_ev"},
        arrays={"spectrum": "/entry_1/result_1/spectrum"},
        timestamps="/entry_1/result_1/timestamp",
    )
    assert info.details["layout"] == "cxi"
    assert info.detector == "test-jungfrau"
    assert info.expected_events == len(data)
    assert info.geometry.pixel_size_m == pytest.approx(75e-6)
    assert info.geometry.distance_m == pytest.approx(0.125)
    assert info.geometry.photon_energy_ev == pytest.approx(9000.0)
    assert info.geometry.beam_center_px == (3.5, 4.25)
    assert info.geometry.detector_shape == FRAME_SHAPE
    np.testing.assert_array_equal(info.arrays["mask"], np.eye(*FRAME_SHAPE, dtype=np.uint8))
    assert [e.event for e in events] == list(range(len(data)))
    for i, event in enumerate(events):
        assert event.arrays["data"].dtype == data.dtype
        np.testing.assert_array_equal(event.arrays["data"], data[i])
        assert event.metadata["photon_energy_ev"] == pytest.approx(9000.0 + 10 * i / (len(data) - 1))
        assert isinstance(event.metadata["photon_energy_ev"], float)
        np.testing.assert_array_equal(event.arrays["spectrum"], np.arange(4 * i, 4 * i + 4, dtype=np.float32))
        assert event.metadata["source_index"] == i
        assert event.timestamp == 1.7e9 + i * 0.5


def test_frames_are_fresh_arrays(tmp_path: Path) -> None:
    data = frames(6, seed=2)
    write_cxi(tmp_path / "run.cxi", data)
    _, (_, events) = read_all(files=[str(tmp_path / "run.cxi")], read_events=2)
    events[0].arrays["data"][...] = 0  # a consumer scribbling on one frame must not change another
    for i, event in enumerate(events[1:], start=1):
        np.testing.assert_array_equal(event.arrays["data"], data[i])


def test_nxmx_external_links_with_bitshuffle(tmp_path: Path) -> None:
    blocks = [frames(5, seed=3, dtype="<u4"), frames(4, seed=4, dtype="<u4")]
    master = write_nxmx(tmp_path, blocks)
    with h5py.File(tmp_path / "series_data_000001.h5") as f:  # the test data really is bitshuffle-compressed
        assert "32008" in f["/entry/data/data"]._filters
    _, (info, events) = read_all(files=[str(master)], read_events=3)
    expected = np.concatenate(blocks)
    assert info.details["layout"] == "nxmx"
    assert info.detector == "Dectris EIGER2 Si 16M"
    assert info.geometry.pixel_size_m == pytest.approx(75e-6)
    assert info.geometry.distance_m == pytest.approx(0.2)
    assert info.geometry.photon_energy_ev == pytest.approx(HC_EV_M / 1e-10)
    assert info.geometry.beam_center_px == (2.0, 3.0)
    assert info.arrays["mask"].shape == FRAME_SHAPE
    assert len(events) == len(expected)
    for i, event in enumerate(events):
        assert event.event == i
        np.testing.assert_array_equal(event.arrays["data"], expected[i])
        assert event.metadata["source_file"] == str(master)
        assert event.metadata["source_index"] == i


def test_path_layout_glob_selection_across_files(tmp_path: Path) -> None:
    parts = [frames(7, seed=10 + k) for k in range(3)]
    for k, part in enumerate(parts):
        with h5py.File(tmp_path / f"chunk_{k}.h5", "w") as f:
            f["/my/frames"] = part
    run = np.concatenate(parts)
    pattern = str(tmp_path / "chunk_*.h5")
    for start, stop, stride, max_events in [(0, None, 1, None), (3, 19, 4, None), (1, None, 3, 4), (20, None, 1, 9)]:
        _, (info, events) = read_all(
            files=pattern,
            layout="path",
            dataset="/my/frames",
            start=start,
            stop=stop,
            stride=stride,
            max_events=max_events,
            read_events=2,
            read_mask=False,
        )
        expected_index = list(range(len(run)))[start:stop:stride][:max_events]
        assert info.expected_events == len(expected_index)
        assert [e.event for e in events] == expected_index
        for event in events:
            np.testing.assert_array_equal(event.arrays["data"], run[event.event])
            assert event.metadata["source_file"] == str(tmp_path / f"chunk_{event.event // 7}.h5")


def test_shards_split_the_selection(tmp_path: Path) -> None:
    write_cxi(tmp_path / "run.cxi", frames(11, seed=5))
    seen: list[list[int]] = []
    for rank in range(3):
        source = Hdf5Source(Hdf5Options(files=[str(tmp_path / "run.cxi")], stride=2))
        source.set_shard(Shard(rank=rank, size=3))
        info = source.open()
        seen.append([e.event for e in source.events()])
        assert info.expected_events == len(seen[-1])
        source.close()
    merged = sorted(i for part in seen for i in part)
    assert merged == list(range(0, 11, 2))
    assert all(seen)


def test_config_overrides_file_geometry(tmp_path: Path) -> None:
    write_cxi(tmp_path / "run.cxi", frames(2, seed=6))
    source = Hdf5Source(
        Hdf5Options(
            files=[str(tmp_path / "run.cxi")],
            distance_m=0.3,
            photon_energy_ev=12000.0,
            beam_center_px=(1.0, 2.0),
            detector="renamed",
        )
    )
    info = source.open()
    source.close()
    assert info.detector == "renamed"
    assert info.geometry.distance_m == 0.3
    assert info.geometry.photon_energy_ev == 12000.0
    assert info.geometry.beam_center_px == (1.0, 2.0)
    assert info.geometry.pixel_size_m == pytest.approx(75e-6)  # not overridden: from the file


def open_error(**options: object) -> str:
    source = Hdf5Source(Hdf5Options(**options))
    with pytest.raises(SourceError) as excinfo:
        source.open()
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_error_missing_file(tmp_path: Path) -> None:
    message = open_error(files=[str(tmp_path / "absent.h5")])
    assert "absent.h5" in message and "no such file" in message


def test_error_not_hdf5(tmp_path: Path) -> None:
    (tmp_path / "notes.h5").write_text("not hdf5")
    message = open_error(files=[str(tmp_path / "notes.h5")])
    assert "notes.h5" in message and "not an HDF5 file" in message


def test_error_missing_dataset_lists_candidates(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["/somewhere/images"] = frames(2, seed=7)
    message = open_error(files=[str(tmp_path / "other.h5")], layout="path", dataset="/entry/data/data")
    assert "'/entry/data/data'" in message and "/somewhere/images (2, 8, 6) uint16" in message
    message = open_error(files=[str(tmp_path / "other.h5")])  # auto layout finds neither CXI nor NXmx
    assert "neither CXI" in message and "/somewhere/images" in message


def test_error_broken_external_link(tmp_path: Path) -> None:
    master = write_nxmx(tmp_path, [frames(2, seed=8)], missing_block=True)
    message = open_error(files=[str(master)])
    assert "series_master.h5" in message and "data_000002" in message and "gone.h5" in message


def test_error_empty_glob(tmp_path: Path) -> None:
    message = open_error(files=[str(tmp_path / "nothing_*.h5")])
    assert "no files match" in message and "nothing_*.h5" in message


def test_error_wrong_dimensionality(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["/values"] = np.arange(5)
    message = open_error(files=[str(tmp_path / "flat.h5")], layout="path", dataset="/values")
    assert "flat.h5" in message and "(5,)" in message and "at least 2 dimensions" in message


def test_error_frame_shape_changes_between_files(tmp_path: Path) -> None:
    write_cxi(tmp_path / "a.cxi", frames(2, seed=9))
    with h5py.File(tmp_path / "b.cxi", "w") as f:
        f["/entry_1/data_1/data"] = np.zeros((2, 4, 4), np.uint16)
    message = open_error(files=[str(tmp_path / "a.cxi"), str(tmp_path / "b.cxi")])
    assert "b.cxi" in message and "(4, 4)" in message


def test_error_extra_dataset_too_short(tmp_path: Path) -> None:
    write_cxi(tmp_path / "run.cxi", frames(4, seed=11))
    with h5py.File(tmp_path / "run.cxi", "a") as f:
        f["/entry_1/result_1/short"] = np.arange(2)
    message = open_error(files=[str(tmp_path / "run.cxi")], metadata={"short": "/entry_1/result_1/short"})
    assert "short" in message and "4 events" in message


def test_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="layout 'path' needs the 'dataset' option"):
        validate_pipeline(
            {"source": {"type": "hdf5", "files": "x.h5", "layout": "path"}, "handlers": [{"type": "null"}]}
        )
    with pytest.raises(ConfigError, match=r"source\.stride"):
        validate_pipeline({"source": {"type": "hdf5", "files": "x.h5", "stride": 0}, "handlers": [{"type": "null"}]})


def test_pipeline_with_null_handler(tmp_path: Path) -> None:
    master = write_nxmx(tmp_path, [frames(3, seed=12), frames(3, seed=13)])
    config = validate_pipeline(
        {"source": {"type": "hdf5", "files": [str(master)]}, "handlers": [{"type": "null"}], "max_events": 5}
    )
    end = Pipeline(config).run()
    assert end.reason == "completed", end.error
    assert end.events_sent == 5
    assert end.counts["read"] == 5
