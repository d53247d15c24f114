"""``stream2``: images from a DECTRIS detector's Stream V2 interface (ZeroMQ PULL, one CBOR message each).

``open`` connects (or binds) and waits for the series' ``start`` message; its geometry, pixel mask,
flatfields and detector fields become the stream's start. ``events`` yields one Frame per ``image`` message
(``event`` = ``image_id``, arrays = the channels, e.g. ``threshold_1``, ``threshold_2``; bslz4/lz4 payloads
decompressed unless ``decompress: false``) and stops at the series' ``end``. Silence longer than
``idle_timeout_s`` is a SourceError, so a detector that stops without an end message cannot hang the run.
The detector round-robins messages over its PULL clients: connect one reader per detector.

    source: {type: stream2, address: "tcp://eiger-dcu:31001", channels: [threshold_1], max_images: 1000}
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import zmq
from pydantic import Field, field_validator

from photonstream import _stream2
from photonstream._stream2 import Stream2FormatError
from photonstream.config.base import PluginOptions
from photonstream.errors import SourceError
from photonstream.frames import Frame
from photonstream.sources.base import SourceInfo, registry
from photonstream.transport.sockets import attach, check_endpoint

DEFAULT_ADDRESS = "tcp://127.0.0.1:31001"


class Stream2Options(PluginOptions):
    type: Literal["stream2"] = "stream2"
    address: str = Field(DEFAULT_ADDRESS, description="the detector's Stream V2 endpoint (port 31001 by default)")
    bind: bool = Field(False, description="bind the address instead of connecting to it (sender connects)")
    start_timeout_s: float = Field(60.0, gt=0, description="how long to wait for the series' start message")
    idle_timeout_s: float = Field(
        30.0, gt=0, description="fail with a SourceError when no message arrives for this long within a series"
    )
    channels: list[str] | None = Field(
        None, min_length=1, description="channels to keep as event arrays (default: every channel)"
    )
    series: int | None = Field(None, ge=0, description="read this series_id; messages of other series are skipped")
    max_images: int | None = Field(None, ge=1, description="stop after this many images")
    decompress: bool = Field(
        True, description="decompress images; false keeps bslz4/lz4 payloads as encoded arrays (no recompression)"
    )
    hwm: int = Field(1000, ge=1, description="messages queued in the receive buffer before the detector blocks")

    @field_validator("address")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)


@registry.register
class Stream2Source:
    Options: ClassVar[type[PluginOptions]] = Stream2Options

    def __init__(self, options: Stream2Options) -> None:
        self.options = options
        self.endpoint = options.address
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._series_id: Any = None
        self.skipped = 0  # messages of other series (or before the start) that were dropped

    def open(self) -> SourceInfo:
        opts = self.options
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, opts.hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = attach(self._socket, opts.address, opts.bind)
        deadline = time.monotonic() + opts.start_timeout_s
        while True:
            start = self._receive(max(deadline - time.monotonic(), 0.0))
            if start is None:
                skipped = f" ({self.skipped} messages of other series skipped)" if self.skipped else ""
                raise SourceError(
                    f"stream2: no start message from {self.endpoint} within {opts.start_timeout_s:g} s{skipped}"
                )
            if start["type"] == "start" and (opts.series is None or start.get("series_id") == opts.series):
                break
            self.skipped += 1
        self._series_id = start.get("series_id")
        message = self._convert(lambda: _stream2.start_message_from_spec(start))
        channels = message.source.get("channels")
        if opts.channels is not None and isinstance(channels, list):
            missing = [c for c in opts.channels if c not in channels]
            if missing:
                raise SourceError(
                    f"stream2: channel {missing[0]!r} is not sent by the detector (channels: {', '.join(channels)})"
                )
            message.source["channels"] = list(opts.channels)
        expected = message.source.get("number_of_images")
        if not isinstance(expected, int):
            expected = None
        if opts.max_images is not None:
            expected = opts.max_images if expected is None else min(expected, opts.max_images)
        return SourceInfo(
            detector=message.detector,
            geometry=message.geometry,
            calibration=message.calibration,
            arrays=message.arrays,
            expected_events=expected,
            details={**message.source, "address": self.endpoint, "skipped_before_start": self.skipped},
        )

    def events(self) -> Iterator[Frame]:
        if self._socket is None:
            raise SourceError("stream2: events() called before open()")
        opts = self.options
        received = 0
        while opts.max_images is None or received < opts.max_images:
            message = self._receive(opts.idle_timeout_s)
            if message is None:
                raise SourceError(
                    f"stream2: no message from {self.endpoint} for {opts.idle_timeout_s:g} s after {received} "
                    f"images of series {self._series_id}, and no end message"
                )
            kind = message["type"]
            if message.get("series_id", self._series_id) != self._series_id or kind not in _stream2.MESSAGE_TYPES:
                self.skipped += 1
                continue
            if kind == "end":
                return
            if kind == "start":
                raise SourceError(
                    f"stream2: series {message.get('series_id')} started at {self.endpoint} before series "
                    f"{self._series_id} ended (end message lost?)"
                )
            frame = self._convert(lambda m=message: _stream2.frame_from_image(m, opts.channels, opts.decompress))
            if opts.channels is not None and len(frame.arrays) != len(opts.channels):
                absent = sorted(set(opts.channels) - set(frame.arrays))
                raise SourceError(f"stream2: image {frame.event} lacks channel {absent[0]!r}")
            received += 1
            yield frame

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def _receive(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message, or None when nothing arrives within ``timeout_s``."""
        assert self._socket is not None
        if not self._socket.poll(int(timeout_s * 1000)):
            return None
        raw = self._socket.recv()
        return self._convert(lambda: _stream2.loads(raw))

    def _convert(self, build: Any) -> Any:
        """Run ``build``, turning a malformed-message error into one SourceError line."""
        try:
            return build()
        except Stream2FormatError as exc:
            raise SourceError(f"stream2: malformed message from {self.endpoint}: {exc}") from None
        except (ValueError, TypeError, LookupError, ArithmeticError) as exc:  # fields of the wrong type or shape
            reason = (str(exc).splitlines() or [""])[0][:200]
            raise SourceError(
                f"stream2: malformed message from {self.endpoint}: {type(exc).__name__}: {reason}"
            ) from None
