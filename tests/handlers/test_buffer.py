"""The ``buffer`` handler inside a real pipeline: every frame reaches a subscriber bit-exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from photonstream.buffer import BufferService
from photonstream.client import subscribe
from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError, HandlerError
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.pipeline import Pipeline
from tests.buffer.support import start_service


@pytest.fixture
def service() -> Iterator[BufferService]:
    service = start_service()
    yield service
    service.stop()


def config(endpoint: str, **handler: object) -> dict[str, object]:
    return {
        "stream": {"experiment": "sim1", "run": 7, "stream_id": "det"},
        "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [64, 64], "events": 12},
        "handlers": [{"type": "buffer", "address": endpoint, **handler}],
    }


def test_a_pipeline_streams_through_the_buffer(service: BufferService) -> None:
    sub = subscribe(service.endpoint, "sim1/7/det", group="check", credit=4, timeout_s=20)
    sent: list[np.ndarray] = []

    class Recorder:
        needs_bytes = False

        def open(self) -> None: ...

        def handle(self, message: object, frames: object) -> None:
            if isinstance(message, Frame):
                sent.append(message.array(next(iter(message.arrays))).copy())

        def close(self) -> None: ...

    pipeline = Pipeline(validate_pipeline(config(service.endpoint)))
    pipeline.handlers.append(Recorder())  # type: ignore[arg-type]
    end = pipeline.run()
    assert end.reason == "completed" and end.events_sent == 12
    messages = list(sub)
    assert isinstance(messages[0], StartMessage) and messages[0].experiment == "sim1"
    assert isinstance(messages[-1], EndMessage) and messages[-1].events_sent == 12
    frames = [m for m in messages if isinstance(m, Frame)]
    assert [f.event for f in frames] == list(range(12))
    for frame, array in zip(frames, sent, strict=True):
        assert np.array_equal(frame.array(next(iter(frame.arrays))), array)


def test_handler_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"handlers\[0\]\.window"):
        validate_pipeline(config("tcp://127.0.0.1:5600", window=0))


def test_an_unreachable_buffer_fails_the_run_with_the_reason() -> None:
    from tests.buffer.support import free_port

    cfg = config(f"tcp://127.0.0.1:{free_port()}", send_timeout_s=0.5, window=1)
    with pytest.raises(HandlerError, match=r"accepted nothing for 0\.5 s \(no answer\)"):
        Pipeline(validate_pipeline(cfg)).run()
