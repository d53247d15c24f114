from __future__ import annotations

import h5py
import numpy as np
import pytest

from photonstream.errors import ConfigError, StepError
from photonstream.frames import Calibration, CalibrationMessage, Frame
from photonstream.processing.calibrate import nan_median
from tests.processing._steps import make_frame, make_start, make_step, parse_step, raw_frames

SHAPE = (2, 4, 6)  # (panels, rows, cols)


@pytest.fixture
def constants() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[0, 1, 2] = mask[1, 3, 5] = 1
    return {
        "pedestal": rng.uniform(90, 110, size=SHAPE),
        "gain": rng.uniform(5, 15, size=SHAPE),
        "mask": mask,
    }


def inline(constants: dict[str, np.ndarray], **extra: object) -> dict[str, object]:
    return {"type": "calibrate", **{k: v.tolist() for k, v in constants.items()}, **extra}


def test_divide_gain_and_zero_masked_pixels_match_numpy(constants: dict[str, np.ndarray]) -> None:
    step = make_step(inline(constants))
    step.setup(make_start(SHAPE))
    raw = raw_frames(SHAPE, 1)[0]

    [frame] = step.apply(make_frame(0, raw))

    expected = (raw.astype(np.float32) - constants["pedestal"].astype(np.float32)) / constants["gain"].astype(
        np.float32
    )
    expected[constants["mask"] != 0] = 0
    out = frame.arrays["data"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    assert frame.metadata["calibration_version"] == 1
    assert raw.dtype == np.uint16  # the raw buffer is not overwritten


def test_multiply_gain_nan_fill_float64_and_zero_bad_convention(constants: dict[str, np.ndarray]) -> None:
    good = (constants["mask"] == 0).astype(np.uint8)  # psana style: 1 = good pixel
    options = inline(
        {**constants, "mask": good},
        gain_mode="multiply",
        masked_value="nan",
        mask_convention="zero-bad",
        dtype="float64",
    )
    step = make_step(options)
    raw = raw_frames(SHAPE, 1, seed=3)[0]

    [frame] = step.apply(make_frame(0, raw))

    expected = (raw.astype(np.float64) - constants["pedestal"]) * constants["gain"]
    expected[good == 0] = np.nan
    assert frame.arrays["data"].dtype == np.float64
    np.testing.assert_array_equal(frame.arrays["data"], expected)


def test_constants_broadcast_per_panel() -> None:
    gain_per_panel = [[[2.0]], [[4.0]]]  # (panels, 1, 1)
    step = make_step({"type": "calibrate", "pedestal": 10, "gain": gain_per_panel})
    raw = raw_frames(SHAPE, 1)[0]

    [frame] = step.apply(make_frame(0, raw))

    expected = (raw.astype(np.float32) - np.float32(10)) / np.array(gain_per_panel, dtype=np.float32)
    np.testing.assert_array_equal(frame.arrays["data"], expected)


def test_npy_and_hdf5_files_equal_inline_and_are_referenced(tmp_path, constants) -> None:
    np.save(tmp_path / "pedestal.npy", constants["pedestal"])
    with h5py.File(tmp_path / "calib.h5", "w") as f:
        f["/detector/gain"] = constants["gain"]
        f["/detector/mask"] = constants["mask"]
    from_files = make_step(
        {
            "type": "calibrate",
            "pedestal": str(tmp_path / "pedestal.npy"),
            "gain": {"path": str(tmp_path / "calib.h5"), "dataset": "/detector/gain"},
            "mask": {"path": str(tmp_path / "calib.h5"), "dataset": "/detector/mask"},
        }
    )
    from_inline = make_step(inline(constants))
    start_files, start_inline = make_start(SHAPE), make_start(SHAPE)
    from_files.setup(start_files)
    from_inline.setup(start_inline)
    raw = raw_frames(SHAPE, 1)[0]

    [a] = from_files.apply(make_frame(0, raw))
    [b] = from_inline.apply(make_frame(0, raw))

    np.testing.assert_array_equal(a.arrays["data"], b.arrays["data"])
    assert start_files.calibration.references == {
        "pedestal": str(tmp_path / "pedestal.npy"),
        "gain": f"{tmp_path / 'calib.h5'}::/detector/gain",
        "mask": f"{tmp_path / 'calib.h5'}::/detector/mask",
    }
    assert start_inline.calibration.references == {}
    assert start_files.calibration.arrays == {}  # no embed: references only


def test_identifier_derived_from_constant_bytes_or_given(constants) -> None:
    def identifier(options: dict) -> str:
        start = make_start(SHAPE)
        make_step(options).setup(start)
        return start.calibration.identifier

    derived = identifier(inline(constants))
    assert derived.startswith("sha256:") and len(derived) == len("sha256:") + 16
    assert identifier(inline(constants)) == derived
    changed = {**constants, "pedestal": constants["pedestal"] + 1}
    assert identifier(inline(changed)) != derived
    assert identifier(inline(constants, identifier="ped-r0042")) == "ped-r0042"


def test_start_message_gets_mask_and_embedded_constants(constants) -> None:
    source_mask = np.zeros(SHAPE, dtype=np.uint8)
    source_mask[1, 0, 0] = 1
    start = make_start(SHAPE)
    start.arrays["mask"] = source_mask
    start.calibration = Calibration(identifier="from-source", version=3)
    step = make_step(inline(constants, embed=True))

    step.setup(start)

    expected_mask = ((constants["mask"] != 0) | (source_mask != 0)).astype(np.uint8)
    np.testing.assert_array_equal(start.arrays["mask"], expected_mask)
    assert start.arrays["mask"].dtype == np.uint8
    assert start.calibration.version == 4  # the source's version + 1
    assert set(start.calibration.arrays) == {"pedestal", "gain", "mask"}
    np.testing.assert_array_equal(start.calibration.arrays["pedestal"], constants["pedestal"])
    # the source's bad pixel is masked in the frames too
    [frame] = step.apply(make_frame(0, raw_frames(SHAPE, 1)[0]))
    assert frame.arrays["data"][1, 0, 0] == 0


def common_mode_reference(value: np.ndarray, bad: np.ndarray, asic: tuple[int, int], region: str, limit: float):
    """Median per region computed pixel by pixel, independently of the step's reshaping."""
    correction = np.zeros_like(value)
    ar, ac = asic
    for p in range(value.shape[0]):
        for r0 in range(0, value.shape[1], ar):
            for c0 in range(0, value.shape[2], ac):
                rows = [range(r0, r0 + ar)] if region == "asic" else [[r] for r in range(r0, r0 + ar)]
                for row_set in rows:
                    samples = [
                        value[p, r, c]
                        for r in row_set
                        for c in range(c0, c0 + ac)
                        if not bad[p, r, c] and value[p, r, c] < limit
                    ]
                    median = np.median(samples) if samples else 0.0
                    for r in row_set:
                        correction[p, r, c0 : c0 + ac] = median
    return correction


@pytest.mark.parametrize("region", ["row", "asic"])
def test_common_mode_median_per_region_without_bad_pixels_and_photons(region: str, constants) -> None:
    shape = (2, 4, 8)
    rng = np.random.default_rng(11)
    pedestal = np.full(shape, 100.0)
    offsets = rng.integers(-20, 20, size=(2, 4, 2)).repeat(4, axis=2)  # one offset per row per 4-column ASIC
    raw = (pedestal + offsets + rng.integers(0, 3, size=shape)).astype(np.uint16)
    raw[0, 0, 1] += 500  # a photon
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1, 2, 3] = 1
    options = {
        "type": "calibrate",
        "pedestal": pedestal.tolist(),
        "mask": mask.tolist(),
        "common_mode": {"region": region, "asic_shape": [2, 4], "max_value": 200},
    }
    step = make_step(options)

    [frame] = step.apply(make_frame(0, raw))

    after_pedestal = raw.astype(np.float32) - pedestal.astype(np.float32)
    expected = after_pedestal - common_mode_reference(after_pedestal, mask != 0, (2, 4), region, 200)
    expected[mask != 0] = 0
    np.testing.assert_allclose(frame.arrays["data"], expected, rtol=0, atol=1e-4)
    assert abs(frame.arrays["data"][0, 0, 1] - 500) < 25  # the photon survives the correction


@pytest.mark.parametrize("axes", [(-1,), (-3, -1)])
def test_nan_median_equals_numpy_nanmedian_and_is_zero_where_nothing_is_valid(axes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(2, 3, 4, 5, 7)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0, 1, :, 2, :] = np.nan  # a region with no valid pixel

    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nan_to_num(np.nanmedian(values, axis=axes), nan=0.0)
    np.testing.assert_allclose(nan_median(values, axes), expected, rtol=0, atol=1e-6)


def test_updates_emit_calibration_message_before_first_frame_at_or_after_from_event(constants) -> None:
    new_pedestal = constants["pedestal"] + 50
    new_mask = np.zeros(SHAPE, dtype=np.uint8)
    new_mask[0, 0, 0] = 1
    options = inline(
        constants,
        updates=[
            {"from_event": 3, "pedestal": new_pedestal.tolist(), "identifier": "ped-2"},
            {"from_event": 5, "mask": new_mask.tolist()},
        ],
    )
    step = make_step(options)
    start = make_start(SHAPE)
    step.setup(start)
    raws = raw_frames(SHAPE, 7)

    outputs = [step.apply(make_frame(event, raw)) for event, raw in enumerate(raws)]

    assert [len(o) for o in outputs] == [1, 1, 1, 2, 1, 2, 1]
    first_update, frame3 = outputs[3]
    assert isinstance(first_update, CalibrationMessage) and isinstance(frame3, Frame)
    assert first_update.from_event == 3
    assert first_update.calibration.version == 2
    assert first_update.calibration.identifier == "ped-2"
    assert "mask" not in first_update.calibration.arrays  # the mask did not change
    second_update = outputs[5][0]
    assert second_update.from_event == 5 and second_update.calibration.version == 3
    assert second_update.calibration.identifier.startswith("sha256:")
    np.testing.assert_array_equal(second_update.calibration.arrays["mask"], new_mask)
    versions = [o[-1].metadata["calibration_version"] for o in outputs]
    assert versions == [1, 1, 1, 2, 2, 3, 3]

    gain = constants["gain"].astype(np.float32)
    for event in (2, 3, 6):
        pedestal = (constants["pedestal"] if event < 3 else new_pedestal).astype(np.float32)
        mask = constants["mask"] if event < 5 else new_mask
        expected = (raws[event].astype(np.float32) - pedestal) / gain
        expected[mask != 0] = 0
        np.testing.assert_array_equal(outputs[event][-1].arrays["data"], expected)


def test_updates_skipped_over_are_all_announced_in_order(constants) -> None:
    options = inline(
        constants,
        updates=[{"from_event": 3, "pedestal": 1.0}, {"from_event": 5, "pedestal": 2.0}],
    )
    step = make_step(options)
    raws = raw_frames(SHAPE, 2)

    step.apply(make_frame(0, raws[0]))
    out = step.apply(make_frame(9, raws[1]))

    assert [type(m).__name__ for m in out] == ["CalibrationMessage", "CalibrationMessage", "Frame"]
    assert [m.from_event for m in out[:2]] == [3, 5]
    expected = (raws[1].astype(np.float32) - np.float32(2.0)) / constants["gain"].astype(np.float32)
    expected[constants["mask"] != 0] = 0
    np.testing.assert_array_equal(out[2].arrays["data"], expected)


def test_constant_shape_mismatch_is_one_step_error_line(tmp_path) -> None:
    np.save(tmp_path / "ped.npy", np.zeros((3, 4)))
    step = make_step({"type": "calibrate", "pedestal": str(tmp_path / "ped.npy")})

    with pytest.raises(StepError) as err:
        step.apply(make_frame(4, np.zeros((4, 4), dtype=np.uint16)))

    message = str(err.value)
    assert "\n" not in message
    assert "pedestal shape (3, 4)" in message and "(4, 4)" in message and "ped.npy" in message
    assert "event 4" in message


def test_missing_array_is_a_step_error() -> None:
    step = make_step({"type": "calibrate", "pedestal": 1, "arrays": ["image"]})
    with pytest.raises(StepError, match=r"no array 'image' \(it has: data\)"):
        step.apply(make_frame(0, np.zeros((2, 2), dtype=np.uint16)))


def test_unreadable_constant_files_are_config_errors(tmp_path) -> None:
    with h5py.File(tmp_path / "calib.h5", "w") as f:
        f["gain"] = np.ones((2, 2))
    (tmp_path / "text.npy").write_text("not numpy")
    cases = [
        ({"pedestal": str(tmp_path / "absent.npy")}, r"calibrate\.pedestal: file .*absent\.npy does not exist"),
        ({"gain": {"path": str(tmp_path / "calib.h5"), "dataset": "/nope"}}, r"calibrate\.gain: .* no dataset"),
        ({"mask": str(tmp_path / "text.npy")}, r"calibrate\.mask: .*text\.npy is not a readable \.npy file"),
        (
            {"pedestal": 1, "updates": [{"from_event": 2, "gain": str(tmp_path / "calib.h5")}]},
            r"calibrate\.updates\[0\]\.gain: .*calib\.h5 is not a readable \.npy file \(for an HDF5 file",
        ),
    ]
    for options, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            make_step({"type": "calibrate", **options})


def test_zero_gain_outside_the_mask_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"calibrate\.gain: 1 unmasked pixels have gain 0"):
        make_step({"type": "calibrate", "gain": [[1.0, 0.0], [1.0, 0.0]], "mask": [[0, 0], [0, 1]]})


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({}, r"^steps\[0\]: Value error, calibrate needs at least one of"),
        ({"pedestal": 1, "gain_mode": "sqrt"}, r"^steps\[0\]\.gain_mode: Input should be 'divide' or 'multiply'"),
        ({"pedestal": [[1, 2], [3]]}, r"^steps\[0\]\.pedestal.*nested list of numbers"),
        ({"pedestal": 1, "colour": "red"}, r"^steps\[0\]\.colour: unknown option"),
        (
            {"pedestal": 1, "updates": [{"from_event": 5, "gain": 2}, {"from_event": 5, "gain": 3}]},
            r"^steps\[0\]: Value error, updates must have increasing from_event",
        ),
        ({"pedestal": 1, "updates": [{"from_event": 5}]}, r"^steps\[0\]\.updates\[0\]: Value error, an update needs"),
        (
            {"pedestal": 1, "common_mode": {"asic_shape": [0, 4]}},
            r"^steps\[0\]\.common_mode\.asic_shape\[0\]: Input should be greater than 0",
        ),
    ],
)
def test_bad_options_are_one_config_error_line(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        parse_step({"type": "calibrate", **options})
    assert "\n" not in str(err.value)


def test_common_mode_asic_shape_must_tile_the_panel() -> None:
    step = make_step({"type": "calibrate", "common_mode": {"region": "asic", "asic_shape": [3, 4]}})
    with pytest.raises(StepError, match=r"asic_shape \[3, 4\] does not tile array 'data'"):
        step.apply(make_frame(0, np.zeros((4, 8), dtype=np.uint16)))


class Recorder:
    """A handler that keeps what it is given: messages and their serialized bytes."""

    needs_bytes = True

    def __init__(self) -> None:
        self.received: list[tuple[object, list]] = []

    def open(self) -> None:
        return None

    def handle(self, message: object, frames: list | None) -> None:
        self.received.append((message, list(frames or [])))

    def close(self) -> None:
        return None


def test_pipeline_sends_calibration_message_before_the_batch_of_new_constants(tmp_path) -> None:
    from photonstream.config.pipeline import validate_pipeline
    from photonstream.frames import FrameBatch, StartMessage
    from photonstream.pipeline import Pipeline
    from photonstream.serializers.msgpack import MsgpackSerializer

    raws = np.stack(raw_frames((2, 8, 12), 7, high=60))
    with h5py.File(tmp_path / "run.cxi", "w") as f:
        f["/entry_1/data_1/data"] = raws
    config = validate_pipeline(
        {
            "source": {"type": "hdf5", "files": [str(tmp_path / "run.cxi")]},
            "steps": [
                {"type": "calibrate", "pedestal": 10, "gain": 2, "updates": [{"from_event": 3, "pedestal": 20}]},
                {"type": "roi", "box": [0, 6, 0, 10]},
                {"type": "bin", "factor": 2},
                {"type": "threshold", "threshold": 1},
                {"type": "compress", "codec": "zstd"},
                {"type": "batch", "size": 3},
            ],
            "handlers": [{"type": "null"}],
        }
    )
    pipeline = Pipeline(config)
    recorder = Recorder()
    pipeline.handlers = [recorder]

    end = pipeline.run()

    assert end.reason == "completed" and end.events_sent == 7
    serializer = MsgpackSerializer()
    messages = [serializer.decode(frames) for _, frames in recorder.received]  # what a consumer reads
    kinds = [m.kind for m in messages]
    assert kinds == ["start", "batch", "calibration", "batch", "batch", "end"]
    start, update = messages[0], messages[2]
    assert isinstance(start, StartMessage) and isinstance(update, CalibrationMessage)
    assert start.geometry.detector_shape == (2, 3, 5)
    assert (start.calibration.version, update.calibration.version, update.from_event) == (1, 2, 3)
    frames = [f for m in messages if isinstance(m, FrameBatch) for f in m.frames]
    assert [f.event for f in frames] == list(range(7))
    assert [f.metadata["calibration_version"] for f in frames] == [1, 1, 1, 2, 2, 2, 2]
    for frame in frames:
        pedestal = np.float32(10 if frame.event < 3 else 20)
        value = (raws[frame.event].astype(np.float32) - pedestal) / np.float32(2)  # halves: sums are exact
        binned = value[:, 0:6, 0:10].reshape(2, 3, 2, 5, 2).sum(axis=(2, 4))
        expected = np.where(binned < 1, np.float32(0), binned)
        np.testing.assert_array_equal(frame.array("data"), expected)
        assert frame.metadata["compression_ratio"] > 0
