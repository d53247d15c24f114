"""The torch consumer: a hit classifier trained live from the buffer, DataLoader workers sharing a buffer group
(every frame exactly once), epochs replayed from the beginning, the plain-iterator path, the CLI and errors.

The classifier must reach at least 90 % accuracy on held-out events of a seeded synthetic run (half hits, a small
128 × 128 detector), well above the majority-class baseline.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from photonstream.buffer import BufferService  # noqa: E402
from photonstream.config.pipeline import validate_pipeline  # noqa: E402
from photonstream.consumers.cli import train_app  # noqa: E402
from photonstream.consumers.hitclassifier import downsample_log, train_hit_classifier  # noqa: E402
from photonstream.consumers.torch import StreamDataset  # noqa: E402
from photonstream.errors import ConfigError  # noqa: E402
from photonstream.frames import EndMessage, StartMessage  # noqa: E402
from photonstream.pipeline import Pipeline  # noqa: E402
from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions  # noqa: E402
from tests.buffer.support import start_service  # noqa: E402

SMALL_DETECTOR = {"detector": "custom", "shape": [128, 128], "pixel_size_m": 0.0008}
MIN_ACCURACY = 0.90


@pytest.fixture(scope="module")
def buffer() -> Iterator[BufferService]:
    service = start_service()
    yield service
    service.stop()


def pipeline_into(buffer: BufferService, stream_id: str, events: int, **source: Any) -> Pipeline:
    config = validate_pipeline(
        {
            "stream": {"experiment": "sim", "run": 1, "stream_id": stream_id},
            "source": {"type": "synthetic-diffraction", "events": events, **SMALL_DETECTOR, **source},
            "handlers": [{"type": "buffer", "address": buffer.endpoint, "send_timeout_s": 30}],
        }
    )
    return Pipeline(config)


@pytest.fixture(scope="module")
def small_stream(buffer: BufferService) -> tuple[str, int]:
    """A finished 40-event run in the buffer, for the sharing and replay tests."""
    end = pipeline_into(buffer, "small", 40, seed=1, hit_fraction=0.5, shape=[16, 16]).run()
    assert end.reason == "completed"
    return "sim/1/small", 40


def events_of(loader: Any) -> list[tuple[int, int, int]]:
    """(event, epoch, shard) of every item a DataLoader over a ``label=None`` dataset gives."""
    seen = []
    for _images, info in loader:
        seen += zip(info["event"].tolist(), info["epoch"].tolist(), info["shard"].tolist(), strict=True)
    return seen


def test_hit_classifier_trained_live_reaches_the_accuracy(buffer: BufferService) -> None:
    pipeline = pipeline_into(buffer, "live", 300, seed=3, hit_fraction=0.5)
    producer = threading.Thread(target=pipeline.run, daemon=True)
    producer.start()  # training reads the stream while the pipeline is still producing it
    report = train_hit_classifier(buffer.endpoint, "sim/1/live", holdout_every=5, seed=0, timeout_s=30)
    producer.join(30)
    assert report.test_events == 60 and report.train_events == 240
    assert 0.3 < report.test_hits / report.test_events < 0.7
    assert report.accuracy >= MIN_ACCURACY, report.as_dict()
    assert report.accuracy > report.majority_baseline + 0.3


def test_two_workers_share_a_buffer_group_and_see_every_frame_once(
    buffer: BufferService, small_stream: tuple[str, int]
) -> None:
    stream, events = small_stream
    dataset = StreamDataset(buffer.endpoint, stream, group="two-workers", credit=1, timeout_s=20)
    seen = events_of(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2))
    by_shard = {shard: sorted(e for e, _, s in seen if s == shard) for shard in (0, 1)}
    assert by_shard[0] and by_shard[1], "both workers got a share"
    assert not set(by_shard[0]) & set(by_shard[1])
    assert sorted(by_shard[0] + by_shard[1]) == list(range(events))


def test_epochs_replay_the_stream_in_fresh_groups(buffer: BufferService, small_stream: tuple[str, int]) -> None:
    stream, events = small_stream
    dataset = StreamDataset(buffer.endpoint, stream, group="replayed", epochs=2, label="true_hit", with_info=True)
    items = list(dataset)
    assert [info["epoch"] for _, _, info in items] == [0] * events + [1] * events
    assert [info["event"] for _, _, info in items] == list(range(events)) * 2
    assert all(isinstance(label, bool) for _, label, _ in items)
    assert items[0][0].dtype == torch.float32 and items[0][0].shape == (16, 16)
    assert dataset.group_for(1) == "replayed.replay1"


def test_a_message_factory_is_sharded_across_workers() -> None:
    source = SyntheticDiffraction(SyntheticDiffractionOptions(events=30, seed=2, hit_fraction=0.5, **SMALL_DETECTOR))
    messages = [StartMessage("x", source=source.open().details), *source.events(), EndMessage("x", events_sent=30)]
    dataset = StreamDataset(lambda: iter(messages), transform=downsample_log, epochs=2)
    seen = events_of(torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2))
    for epoch in (0, 1):
        shares = [{e for e, ep, s in seen if ep == epoch and s == shard} for shard in (0, 1)]
        assert shares[0] and shares[1] and not shares[0] & shares[1]
        assert sorted(shares[0] | shares[1]) == list(range(30))
    image, info = next(iter(StreamDataset(lambda: iter(messages), transform=downsample_log)))
    assert image.shape == (1, 64, 64) and info["true_hit"] == messages[1].metadata["true_hit"]


def test_the_cli_trains_and_reports_json(buffer: BufferService, small_stream: tuple[str, int]) -> None:
    stream, _ = small_stream
    result = CliRunner().invoke(train_app, ["hitclassifier", stream, "--buffer", buffer.endpoint, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["test_events"] == 8 and report["train_events"] == 32 and 0.0 <= report["accuracy"] <= 1.0
    bad = CliRunner().invoke(train_app, ["hitclassifier", stream, "--buffer", buffer.endpoint, "--holdout-every", "1"])
    assert bad.exit_code == 2 and "holdout_every" in bad.output


def test_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match="stream"):
        StreamDataset("tcp://127.0.0.1:5600")
    with pytest.raises(ConfigError, match="policy"):
        StreamDataset("tcp://127.0.0.1:5600", "a/1/b", policy="sometimes")
    with pytest.raises(ConfigError, match="epochs"):
        StreamDataset("tcp://127.0.0.1:5600", "a/1/b", epochs=0)
    source = SyntheticDiffraction(SyntheticDiffractionOptions(events=1, **SMALL_DETECTOR))
    source.open()
    frames = list(source.events())
    with pytest.raises(ConfigError, match="no metadata 'hit'"):
        next(iter(StreamDataset(lambda: iter(frames), label="hit")))
    assert np.isclose(float(downsample_log(np.full((4, 100, 30), 7.0), 16).max()), np.log1p(7.0))


def test_a_thumbnail_is_exactly_what_the_trainer_would_pool_from_the_full_frame() -> None:
    from photonstream.processing.thumbnail import Thumbnail, ThumbnailOptions

    source = SyntheticDiffraction(SyntheticDiffractionOptions(detector="epix10k2m", events=2, hit_fraction=1.0, seed=3,
                                                              resolution_limit_a=4.0, background_bank=2))  # fmt: skip
    source.open()
    frame = source.frame(0)
    full = downsample_log(frame.arrays["data"], 64)
    Thumbnail(ThumbnailOptions(size=64)).apply(frame)
    assert frame.arrays["thumbnail"].shape == (64, 64) and frame.arrays["thumbnail"].nbytes == 8192
    assert torch.equal(downsample_log(frame.arrays["thumbnail"], 64), full)
    assert float(full.max()) > np.log1p(5)  # the Bragg spots survive the pooling
