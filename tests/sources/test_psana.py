"""The psana source against XTC2 runs written with psana's own dgramedit (photonstream.testing.xtc2)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psana", reason="needs psana (pip install 'photonstream[psana]')")

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError, SourceError
from photonstream.pipeline import Pipeline
from photonstream.sources.base import Shard
from photonstream.sources.base import registry as sources
from photonstream.testing.xtc2 import Xtc2Run, write_xtc2_experiment, write_xtc2_run

pytestmark = [pytest.mark.psana, pytest.mark.timeout(60)]

EVENTS = 20
SHAPE = (64, 128)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Xtc2Run]:
    root = tmp_path_factory.mktemp("xtc2")
    return {
        "fakecam": write_xtc2_run(
            root / "fakecam.xtc2", EVENTS, SHAPE, np.uint16, "jungfrau", waveform_samples=256, waveform_every=3, seed=1
        ),
        "generic": write_xtc2_run(
            root / "generic.xtc2", EVENTS, SHAPE, np.float32, "simcam", "generic", seed=2, waveform_samples=300
        ),
        "experiment": write_xtc2_experiment(
            root / "exp", 7, shape=(16, 32), dtype=np.int32, detector="jungfrau", experiment="tstx00118", run=4
        ),
    }


def open_source(**options):
    source = sources.get("psana")(sources.get("psana").Options(**options))
    return source, source.open()


def read_all(**options):
    source, info = open_source(**options)
    try:
        return info, list(source.events())
    finally:
        source.close()


def assert_matches(frame, written: Xtc2Run) -> None:
    expected = written.event(frame.event)
    data = frame.arrays["data"]
    assert data.dtype == expected["image"].dtype
    assert data.shape == expected["image"].shape
    assert np.array_equal(data, expected["image"])
    if "waveform" in expected:
        assert np.array_equal(frame.arrays["waveform"], expected["waveform"])
    else:
        assert "waveform" not in frame.arrays
    if "photon_energy" in expected:
        assert frame.metadata["photon_energy"] == expected["photon_energy"]
    assert frame.metadata["psana_timestamp"] == written.timestamps[frame.event]
    assert frame.timestamp == pytest.approx(written.unix_seconds(frame.event), abs=1e-6)


@pytest.mark.parametrize("layout", ["fakecam", "generic"])
def test_every_event_round_trips_exactly(runs, layout):
    written = runs[layout]
    info, frames = read_all(files=[str(written.path)], detector=written.detector, fields=written.fields, missing="keep")
    assert [f.event for f in frames] == list(range(EVENTS))
    for frame in frames:
        assert_matches(frame, written)
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == EVENTS
    assert info.detector == written.detector
    assert info.geometry.detector_shape == SHAPE
    assert info.expected_events == EVENTS
    assert (info.details["experiment"], info.details["run"]) == (written.experiment, written.run)


def test_default_field_is_the_raw_array(runs):
    written = runs["fakecam"]
    _, frames = read_all(files=str(written.path), detector=written.detector, max_events=3)
    assert [sorted(f.arrays) for f in frames] == [["data"]] * 3
    assert not frames[0].arrays["data"].flags.writeable  # psana's buffer, not a copy
    _, copied = read_all(files=str(written.path), detector=written.detector, max_events=1, copy_arrays=True)
    assert copied[0].arrays["data"].flags.writeable


def test_events_missing_a_field_are_skipped_by_default_and_counted(runs):
    written = runs["fakecam"]
    _, frames = read_all(files=[str(written.path)], detector=written.detector, fields=written.fields)
    assert [f.event for f in frames] == list(range(0, EVENTS, written.waveform_every))
    for frame in frames:
        assert_matches(frame, written)
    source = {"type": "psana", "files": [str(written.path)], "detector": written.detector, "fields": written.fields}
    end = Pipeline(validate_pipeline({"source": source, "handlers": [{"type": "null"}]})).run()
    assert end.reason == "completed" and end.events_sent == len(frames)
    assert end.counts["skipped_missing"] == EVENTS - len(frames) > 0
    kept = dict(source, missing="keep")
    kept_end = Pipeline(validate_pipeline({"source": kept, "handlers": [{"type": "null"}]})).run()
    assert "skipped_missing" not in kept_end.counts


@pytest.mark.parametrize(
    ("start", "stop", "stride", "max_events"),
    [(0, None, 1, None), (5, None, 1, None), (2, 17, 3, None), (1, None, 2, 4), (0, 0, 1, None), (3, None, 1, 0)],
)
def test_event_range(runs, start, stop, stride, max_events):
    written = runs["generic"]
    wanted = list(range(start, EVENTS if stop is None else stop, stride))[:max_events]
    info, frames = read_all(
        files=[str(written.path)],
        detector=written.detector,
        fields=written.fields,
        start=start,
        stop=stop,
        stride=stride,
        max_events=max_events,
    )
    assert [f.event for f in frames] == wanted
    assert info.expected_events == len(wanted)
    for frame in frames:
        assert_matches(frame, written)


def test_shards_split_the_selection_without_overlap(runs):
    written = runs["generic"]
    options = {"files": [str(written.path)], "detector": written.detector, "fields": written.fields, "stride": 2}
    _, everything = read_all(**options)
    seen: list[int] = []
    for rank in range(3):
        source = sources.get("psana")(sources.get("psana").Options(**options))
        source.set_shard(Shard(rank=rank, size=3))
        info = source.open()
        events = [f.event for f in source.events()]
        source.close()
        assert info.expected_events == len(events) > 0
        seen.extend(events)
    assert sorted(seen) == [f.event for f in everything]


def test_several_files_read_in_order(runs):
    a, b = runs["generic"], runs["generic"]
    info, frames = read_all(files=[str(a.path), str(b.path)], detector=a.detector, fields={"data": "xtc1dump.image"})
    assert [f.event for f in frames] == list(range(2 * EVENTS))
    assert info.expected_events == 2 * EVENTS
    assert np.array_equal(frames[EVENTS].arrays["data"], b.event(0)["image"])


def test_experiment_directory_layout(runs):
    written = runs["experiment"]
    info, frames = read_all(exp=written.experiment, run=written.run, dir=str(written.path.parent), detector="jungfrau")
    assert [f.event for f in frames] == list(range(written.events))
    for frame in frames:
        assert_matches(frame, written)
    assert info.expected_events == written.events
    assert info.details["experiment"] == written.experiment


def test_pipeline_runs_to_the_end(runs):
    written = runs["generic"]
    config = validate_pipeline(
        {
            "stream": {"experiment": written.experiment, "run": written.run, "stream_id": "xtc2"},
            "source": {"type": "psana", "files": [str(written.path)], "detector": written.detector},
            "handlers": [{"type": "null"}],
        }
    )
    with pytest.raises(SourceError, match=re.escape("has no raw.raw; it offers xtc1dump.image")):
        Pipeline(config).run()
    fields = {"data": "xtc1dump.image", "energy": "xtc1dump.photon_energy"}
    config = validate_pipeline({**config.model_dump(), "source": {**config.source.model_dump(), "fields": fields}})
    pipeline = Pipeline(config)
    end = pipeline.run()
    assert (end.reason, end.events_sent, end.counts["read"]) == ("completed", EVENTS, EVENTS)
    assert pipeline.handlers[0].messages == EVENTS + 2  # start + events + end
    assert pipeline.handlers[0].bytes > EVENTS * written.event(0)["image"].nbytes


# -- errors: one readable line, and psana never sees a file it would crash on --------------------------------


def not_xtc2_files(tmp: Path, fakecam: Path) -> dict[str, tuple[Path, str]]:
    import h5py

    text = tmp / "notes.xtc2"
    text.write_text("these are notes, not detector data\n" * 10)
    hdf5 = tmp / "frames.h5"
    with h5py.File(hdf5, "w") as f:
        f["data"] = np.zeros((4, 4))
    empty = tmp / "empty.xtc2"
    empty.write_bytes(b"")
    cut_config = tmp / "cut-config.xtc2"
    cut_config.write_bytes(fakecam.read_bytes()[:100])
    return {
        "missing": (tmp / "nope.xtc2", "no such file"),
        "directory": (tmp, "not a regular file"),
        "text": (text, "not XTC2"),
        "hdf5": (hdf5, "HDF5 file, not XTC2"),
        "empty": (empty, "too short"),
        "truncated Configure": (cut_config, "truncated inside its Configure"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "text", "hdf5", "empty", "truncated Configure"])
def test_unreadable_input_is_one_line(runs, tmp_path, case):
    path, reason = not_xtc2_files(tmp_path, runs["fakecam"].path)[case]
    with pytest.raises(SourceError) as caught:
        open_source(files=[str(path)], detector="jungfrau")
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and reason in message


def test_truncated_tail_reads_the_complete_events(runs, tmp_path, caplog):
    written = runs["fakecam"]
    data = written.path.read_bytes()
    cut = tmp_path / "cut.xtc2"
    cut.write_bytes(data[: len(data) * 2 // 3])
    info, frames = read_all(files=[str(cut)], detector=written.detector)
    assert 0 < len(frames) < EVENTS
    assert info.expected_events == len(frames)
    assert info.details["truncated"] == [str(cut)]
    for frame in frames:
        assert np.array_equal(frame.arrays["data"], written.event(frame.event)["image"])
    assert "incomplete datagram" in caplog.text


def test_unknown_detector_lists_the_present_ones(runs):
    with pytest.raises(SourceError, match=r"no detector 'epix' in run 1; present: jungfrau, tof$"):
        open_source(files=[str(runs["fakecam"].path)], detector="epix")


def test_unknown_field_lists_what_the_detector_offers(runs):
    written = runs["generic"]
    with pytest.raises(SourceError) as caught:
        open_source(files=[str(written.path)], detector="simcam", fields={"data": "xtc1dump.imag"})
    assert "fields.data: detector 'simcam' has no xtc1dump.imag" in str(caught.value)
    assert "xtc1dump.image, xtc1dump.photon_energy, xtc1dump.waveform" in str(caught.value)


def test_missing_run_in_experiment_directory(runs):
    written = runs["experiment"]
    with pytest.raises(SourceError, match="no run 5"):
        open_source(exp=written.experiment, run=5, dir=str(written.path.parent), detector="jungfrau")
    with pytest.raises(SourceError, match="no such directory"):
        open_source(exp=written.experiment, run=4, dir=str(written.path.parent / "nope"), detector="jungfrau")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ({"detector": "cam"}, "give files, or exp and run"),
        ({"files": ["a.xtc2"], "exp": "x", "run": 1, "detector": "cam"}, "not both"),
        ({"files": ["a.xtc2"], "detector": "cam", "fields": {"data": "raw..raw"}}, "not an accessor"),
        ({"files": ["a.xtc2"], "detector": "cam", "stride": 0}, "source.stride"),
        ({"files": ["a.xtc2"], "detector": "cam", "start": 5, "stop": 2}, "stop (2) is before start (5)"),
    ],
)
def test_bad_options_fail_validation(source, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        validate_pipeline({"source": {"type": "psana", **source}, "handlers": [{"type": "null"}]})
