"""The ``hdf5-follow`` source against a writer process that grows files (SWMR and plain) while it reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import SourceError
from photonstream.pipeline import Pipeline
from photonstream.sources.hdf5_follow import Hdf5FollowOptions, Hdf5FollowSource

pytestmark = pytest.mark.timeout(60)

SHAPE = (6, 5)
DATA = "/entry_1/data_1/data"

# The writer waits for the test's acknowledgement files (ack*) between steps, so the reader really sees a file
# that is still open for SWMR writing, and a plain file that is closed and later re-opened and extended.
WRITER = textwrap.dedent(
    """
    import sys, time, pathlib
    import h5py, numpy as np

    d = pathlib.Path(sys.argv[1])
    shape = (6, 5)

    def frames(seed, n):
        return np.random.default_rng(seed).integers(0, 65535, size=(n, *shape), dtype=np.uint16)

    def wait(name):
        deadline = time.monotonic() + 30
        while not (d / name).exists():
            if time.monotonic() > deadline:
                sys.exit("writer: timed out waiting for " + name)
            time.sleep(0.01)

    f = h5py.File(d / "run_000.h5", "w", libver="latest")
    ds = f.create_dataset("/entry_1/data_1/data", shape=(0, *shape), maxshape=(None, *shape),
                          chunks=(1, *shape), dtype="u2")
    f.swmr_mode = True
    for step in range(3):
        ds.resize(ds.shape[0] + 4, axis=0)
        ds[-4:] = frames(step, 4)
        ds.flush()
        wait(f"ack0_{step}")
    f.close()

    with h5py.File(d / "run_001.h5", "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=frames(10, 3), maxshape=(None, *shape), chunks=(1, *shape))
    wait("ack1_0")
    deadline = time.monotonic() + 30
    while True:  # the reader may hold the file open for a moment
        try:
            f = h5py.File(d / "run_001.h5", "a")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    with f:
        ds = f["/entry_1/data_1/data"]
        ds.resize(6, axis=0)
        ds[3:] = frames(11, 3)
    (d / "END").touch()
    """
)


def writer_frames(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, size=(n, *SHAPE), dtype=np.uint16)


def write_file(path: Path, data: np.ndarray, **attrs: object) -> None:
    with h5py.File(path, "w") as f:
        f[DATA] = data
        f.attrs.update(attrs)


def test_follows_growing_swmr_and_plain_files(tmp_path: Path) -> None:
    expected = np.concatenate([writer_frames(s, 4) for s in range(3)] + [writer_frames(10, 3), writer_frames(11, 3)])
    acks = {4: "ack0_0", 8: "ack0_1", 12: "ack0_2", 15: "ack1_0"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    source = Hdf5FollowSource(
        Hdf5FollowOptions(directory=str(tmp_path), pattern="run_*.h5", poll_interval_s=0.02, idle_timeout_s=20)
    )
    received = []
    try:
        info = source.open()
        for frame in source.events():
            received.append(frame)
            if len(received) in acks:
                (tmp_path / acks[len(received)]).touch()
    finally:
        source.close()
        _, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert info.geometry.detector_shape == SHAPE
    assert source.stats.ended_by == "end marker"
    assert source.stats.swmr_files == 1  # run_000.h5 was read while open for SWMR writing
    assert [f.event for f in received] == list(range(len(expected)))
    for frame, want in zip(received, expected, strict=True):
        assert frame.arrays["data"].dtype == want.dtype
        np.testing.assert_array_equal(frame.arrays["data"], want)
    assert [Path(f.metadata["source_file"]).name for f in received] == ["run_000.h5"] * 12 + ["run_001.h5"] * 6
    assert [f.metadata["source_index"] for f in received] == list(range(12)) + list(range(6))


def test_idle_timeout_ends_the_run(tmp_path: Path) -> None:
    data = writer_frames(1, 5)
    write_file(tmp_path / "a.h5", data)
    source = Hdf5FollowSource(Hdf5FollowOptions(directory=str(tmp_path), idle_timeout_s=0.3, poll_interval_s=0.05))
    source.open()
    received = list(source.events())
    source.close()
    assert source.stats.ended_by == "idle timeout"
    np.testing.assert_array_equal(np.stack([f.arrays["data"] for f in received]), data)


def test_end_attribute_ends_the_run(tmp_path: Path) -> None:
    write_file(tmp_path / "a.h5", writer_frames(2, 2))
    write_file(tmp_path / "b.h5", writer_frames(3, 3), run_complete=True)
    source = Hdf5FollowSource(
        Hdf5FollowOptions(directory=str(tmp_path), end_marker=None, end_attribute="run_complete", poll_interval_s=0.02)
    )
    source.open()
    received = list(source.events())
    source.close()
    assert source.stats.ended_by == "end attribute"
    assert len(received) == 5


def test_no_files_is_an_error_after_the_idle_timeout(tmp_path: Path) -> None:
    source = Hdf5FollowSource(
        Hdf5FollowOptions(directory=str(tmp_path), pattern="*.cxi", idle_timeout_s=0.2, poll_interval_s=0.05)
    )
    with pytest.raises(SourceError, match=r"no file matching '\*\.cxi'"):
        source.open()


def test_frame_shape_change_is_an_error(tmp_path: Path) -> None:
    write_file(tmp_path / "a.h5", writer_frames(4, 2))
    write_file(tmp_path / "b.h5", np.zeros((2, 3, 3), np.uint16))
    (tmp_path / "END").touch()
    source = Hdf5FollowSource(Hdf5FollowOptions(directory=str(tmp_path), poll_interval_s=0.02))
    source.open()
    with pytest.raises(SourceError, match=r"b\.h5.*\(3, 3\)"):
        list(source.events())
    source.close()


def test_pipeline_with_null_handler_and_max_events(tmp_path: Path) -> None:
    write_file(tmp_path / "a.h5", writer_frames(5, 4))
    write_file(tmp_path / "b.h5", writer_frames(6, 4))
    (tmp_path / "END").touch()
    source = {"type": "hdf5-follow", "directory": str(tmp_path), "poll_interval_s": 0.02}
    end = Pipeline(validate_pipeline({"source": source, "handlers": [{"type": "null"}]})).run()
    assert end.reason == "completed", end.error
    assert end.events_sent == 8
    end = Pipeline(validate_pipeline({"source": {**source, "max_events": 6}, "handlers": [{"type": "null"}]})).run()
    assert end.events_sent == 6
