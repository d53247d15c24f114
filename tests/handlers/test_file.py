"""The ``file`` handler: CXI layout, compression filters, direct chunks, rolling parts, path safety, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from photonstream.codecs import encode_array
from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError, HandlerError
from photonstream.frames import EndMessage, Frame, FrameBatch, Geometry, StartMessage
from photonstream.handlers.file import FileHandler, FileOptions
from photonstream.pipeline import Pipeline
from photonstream.sources.hdf5 import Hdf5Options, Hdf5Source

SHAPE = (12, 10)
FILTER_IDS = {"gzip": "gzip", "bslz4": "32008", "lz4": "32004", "zstd": "32015"}


def start_message(**changes: object) -> StartMessage:
    fields: dict = {
        "stream_id": "epix",
        "experiment": "xpptut15",
        "run": 7,
        "detector": "epix10k",
        "geometry": Geometry(75e-6, 0.15, (5.5, 6.0), 9300.0, SHAPE),
        "arrays": {"mask": (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 5 == 0).astype(np.uint8)},
        "pipeline": {"source": {"type": "test"}, "steps": [{"type": "hitfinder"}]},
    }
    fields.update(changes)
    return StartMessage(**fields)


def make_frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        peaks = rng.uniform(0, 10, size=(i % 4, 3)).astype(np.float32)
        out.append(
            Frame(
                event=100 + i,
                arrays={
                    "data": rng.integers(0, 4000, size=SHAPE).astype(np.uint16),
                    "waveform": rng.normal(size=32).astype(np.float32),
                },
                metadata={"hit": bool(i % 2), "n_peaks": len(peaks), "peaks": peaks, "label": f"shot{i}"},
                timestamp=1.7e9 + i * 0.01,
            )
        )
    return out


def write(tmp_path: Path, frames: list[Frame], batch: int = 1, **options: object) -> FileHandler:
    handler = FileHandler(FileOptions(directory=str(tmp_path / "out"), **options))
    handler.open()
    handler.handle(start_message(), None)
    for k in range(0, len(frames), batch):
        group = frames[k : k + batch]
        handler.handle(group[0] if batch == 1 else FrameBatch(frames=group), None)
    handler.handle(
        EndMessage(stream_id="epix", events_sent=len(frames), counts={"read": len(frames)}, reason="completed"), None
    )
    handler.close()
    return handler


def test_cxi_layout(tmp_path: Path) -> None:
    frames = make_frames(6)
    handler = write(tmp_path, frames, batch=4, max_peaks=2)
    assert handler.paths == [(tmp_path / "out" / "xpptut15_r0007_epix.cxi").resolve()]
    with h5py.File(handler.paths[0]) as f:
        data = f["/entry_1/data_1/data"]
        assert data.shape == (6, *SHAPE) and data.chunks == (1, *SHAPE) and data.maxshape == (None, *SHAPE)
        for i, frame in enumerate(frames):
            np.testing.assert_array_equal(data[i], frame.arrays["data"])
            np.testing.assert_array_equal(f["/entry_1/data_1/waveform"][i], frame.arrays["waveform"])
        result = f["/entry_1/result_1"]
        assert list(result["event"][()]) == [fr.event for fr in frames]
        assert list(result["hit"][()]) == [fr.metadata["hit"] for fr in frames]
        assert list(result["n_peaks"][()]) == [fr.metadata["n_peaks"] for fr in frames]
        np.testing.assert_array_equal(result["timestamp"][()], [fr.timestamp for fr in frames])
        assert [s.decode() for s in result["label"][()]] == [fr.metadata["label"] for fr in frames]
        assert list(result["nPeaks"][()]) == [min(len(fr.metadata["peaks"]), 2) for fr in frames]
        assert result["peakXPosRaw"].shape == (6, 2)
        for i, frame in enumerate(frames):
            n = min(len(frame.metadata["peaks"]), 2)
            # peaks rows are (slow, fast, intensity) as the hitfinder writes them; CrystFEL's X is fast-scan
            np.testing.assert_array_equal(result["peakXPosRaw"][i, :n], frame.metadata["peaks"][:n, 1])
            np.testing.assert_array_equal(result["peakYPosRaw"][i, :n], frame.metadata["peaks"][:n, 0])
            np.testing.assert_array_equal(result["peakTotalIntensity"][i, :n], frame.metadata["peaks"][:n, 2])
            assert not result["peakXPosRaw"][i, n:].any()
        assert f.attrs["truncated_peak_lists"] == sum(len(fr.metadata["peaks"]) > 2 for fr in frames)
        det = f["/entry_1/instrument_1/detector_1"]
        assert det["distance"][()] == 0.15 and det["x_pixel_size"][()] == 75e-6
        np.testing.assert_array_equal(det["mask"][()], start_message().arrays["mask"])
        assert json.loads(f.attrs["pipeline_config"]) == start_message().pipeline
        assert f.attrs["end_reason"] == "completed" and f.attrs["events_sent"] == 6
        assert json.loads(f.attrs["counts"]) == {"read": 6}


@pytest.mark.parametrize("compression", ["none", "gzip", "bslz4", "lz4", "zstd"])
def test_compression_round_trip_through_hdf5_source(tmp_path: Path, compression: str) -> None:
    frames = make_frames(5, seed=1)
    handler = write(tmp_path, frames, compression=compression)
    with h5py.File(handler.paths[0]) as f:
        filters = f["/entry_1/data_1/data"]._filters
        assert (FILTER_IDS[compression] in filters) if compression != "none" else not filters
    source = Hdf5Source(
        Hdf5Options(
            files=[str(handler.paths[0])],
            metadata={"hit": "/entry_1/result_1/hit"},
            arrays={"waveform": "/entry_1/data_1/waveform"},
        )
    )
    info = source.open()
    read = list(source.events())
    source.close()
    assert info.geometry.pixel_size_m == pytest.approx(75e-6)
    assert info.geometry.distance_m == pytest.approx(0.15)
    assert info.geometry.photon_energy_ev == pytest.approx(9300.0)
    assert info.geometry.beam_center_px == (5.5, 6.0)
    np.testing.assert_array_equal(info.arrays["mask"], start_message().arrays["mask"])
    assert len(read) == len(frames)
    for sent, got in zip(frames, read, strict=True):
        assert got.arrays["data"].dtype == sent.arrays["data"].dtype
        np.testing.assert_array_equal(got.arrays["data"], sent.arrays["data"])
        np.testing.assert_array_equal(got.arrays["waveform"], sent.arrays["waveform"])
        assert got.metadata["hit"] == sent.metadata["hit"]


@pytest.mark.parametrize(
    ("codec", "compression", "direct"),
    [("bslz4", "bslz4", True), ("zstd", "zstd", True), ("lz4", "lz4", True), ("zstd", "bslz4", False)],
)
def test_encoded_arrays(tmp_path: Path, codec: str, compression: str, direct: bool) -> None:
    frames = make_frames(4, seed=2)
    originals = [f.arrays["data"].copy() for f in frames]
    for frame in frames:
        frame.arrays["data"] = encode_array(frame.arrays["data"], codec)
    handler = write(tmp_path, frames, compression=compression)
    with h5py.File(handler.paths[0]) as f:
        for i, original in enumerate(originals):
            np.testing.assert_array_equal(f["/entry_1/data_1/data"][i], original)
        if direct:  # the stored chunk is the encoded bytes, unchanged
            assert f["/entry_1/data_1/data"].id.read_direct_chunk((0, 0, 0))[1] == frames[0].arrays["data"].data


def test_rolling_parts_read_back_in_order(tmp_path: Path) -> None:
    frames = make_frames(9, seed=3)
    frame_bytes = frames[0].arrays["data"].nbytes
    handler = write(tmp_path, frames, max_file_bytes=3 * frame_bytes)
    assert len(handler.paths) > 1
    assert [p.name for p in handler.paths] == [
        f"xpptut15_r0007_epix_part{k:03d}.cxi" for k in range(1, len(handler.paths) + 1)
    ]
    for path in handler.paths:
        with h5py.File(path) as f:
            assert f.attrs["end_reason"] == "completed"
            assert f.attrs["events_in_file"] == len(f["/entry_1/data_1/data"])
    source = Hdf5Source(Hdf5Options(files=[str(tmp_path / "out" / "*_part*.cxi")]))
    source.open()
    read = list(source.events())
    source.close()
    assert len(read) == len(frames)
    for sent, got in zip(frames, read, strict=True):
        np.testing.assert_array_equal(got.arrays["data"], sent.arrays["data"])


def test_existing_file_is_refused_unless_overwrite(tmp_path: Path) -> None:
    write(tmp_path, make_frames(1))
    with pytest.raises(HandlerError, match="already exists"):
        write(tmp_path, make_frames(1))
    handler = write(tmp_path, make_frames(2), overwrite=True)
    with h5py.File(handler.paths[0]) as f:
        assert len(f["/entry_1/data_1/data"]) == 2


def test_paths_escaping_the_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inside directory"):
        validate_pipeline(
            {
                "source": {"type": "hdf5", "files": "x.h5"},
                "handlers": [{"type": "file", "directory": str(tmp_path), "template": "../x.cxi"}],
            }
        )
    with pytest.raises(ConfigError, match="unknown field 'user'"):
        validate_pipeline(
            {
                "source": {"type": "hdf5", "files": "x.h5"},
                "handlers": [{"type": "file", "directory": str(tmp_path), "template": "{user}.cxi"}],
            }
        )
    handler = FileHandler(FileOptions(directory=str(tmp_path / "out")))
    handler.open()
    with pytest.raises(HandlerError, match="escapes directory"):
        handler.handle(start_message(experiment="../../elsewhere"), None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out" / "link").symlink_to(outside)
    handler = FileHandler(FileOptions(directory=str(tmp_path / "out"), template="link/{stream_id}.cxi"))
    handler.open()
    with pytest.raises(HandlerError, match="escapes directory"):
        handler.handle(start_message(), None)
    assert not any(outside.iterdir())


def test_unstorable_metadata_is_named_not_fatal(tmp_path: Path) -> None:
    frames = make_frames(2)
    frames[0].metadata["tags"] = [1, 2]
    frames[1].metadata["hit"] = "maybe"
    for i, frame in enumerate(frames):
        frame.metadata["orientation"] = np.full((3, 3), i, np.float64)  # fixed shape: one (N, 3, 3) column
        frame.metadata["spots"] = np.zeros((i + 1, 2))  # shape changes: left out entirely
    handler = write(tmp_path, frames)
    with h5py.File(handler.paths[0]) as f:
        skipped = json.loads(f.attrs["skipped"])
        assert any(s.startswith("metadata tags") for s in skipped)
        assert any(s.startswith("metadata hit") for s in skipped)
        assert any(s.startswith("metadata spots") for s in skipped)
        assert "tags" not in f["/entry_1/result_1"] and "spots" not in f["/entry_1/result_1"]
        np.testing.assert_array_equal(f["/entry_1/result_1/orientation"][()], [np.full((3, 3), i) for i in range(2)])


def test_pipeline_hdf5_to_file(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 1000, size=(7, *SHAPE)).astype(np.int32)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["/frames"] = data
    config = validate_pipeline(
        {
            "stream": {"experiment": "cxi01", "run": 3, "stream_id": "jf"},
            "source": {"type": "hdf5", "files": [str(tmp_path / "in.h5")], "layout": "path", "dataset": "/frames"},
            "handlers": [{"type": "file", "directory": str(tmp_path / "out"), "compression": "bslz4"}],
        }
    )
    end = Pipeline(config).run()
    assert end.reason == "completed", end.error
    with h5py.File(tmp_path / "out" / "cxi01_r0003_jf.cxi") as f:
        np.testing.assert_array_equal(f["/entry_1/data_1/data"][()], data)
        assert list(f["/entry_1/result_1/source_index"][()]) == list(range(7))
        assert json.loads(f.attrs["pipeline_config"])["source"]["dataset"] == "/frames"
        assert f.attrs["events_sent"] == 7
