"""``pva``: NTNDArray images from an EPICS pvAccess channel (an areaDetector IOC's PVA plugin, or any PVA server).

``open`` creates a ``pvaccess`` channel monitor and waits up to ``start_timeout_s`` for the first image; its shape
becomes the stream's ``detector_shape``. pvaccess calls back on its own thread: the callback copies what it needs
out of the update (pvapy reuses the update object) into a bounded queue and returns at once; when the queue is full
the update is counted as ``queue_overflow`` and dropped, so pvaccess is never blocked and memory stays bounded.
``events`` yields one Frame per image (``event`` = ``uniqueId``, ``timestamp`` = ``dataTimeStamp``, metadata = the
NTNDArray attributes plus ``pva_unique_id``, arrays = ``{"data": (ny, nx)}``: the ``dimension`` list reversed, as
dimension[0] is x, the fastest axis). The run ends when no image arrives for ``idle_timeout_s`` (a PVA channel has
no end-of-series message) or after ``max_frames``. Updates without an image (the empty NTNDArray a server posts
before acquisition) are skipped.

Compressed images (areaDetector's codec plugin): the bytes are in ``ubyteValue``, ``codec.name`` names the codec,
``codec.parameters`` holds the uncompressed pvData ScalarType as an int and ``uncompressedSize`` the byte count.
``lz4`` is one raw LZ4 block and ``bslz4`` is bitshuffle's ``bshuf_compress_lz4`` stream (default block size),
both without the 12-byte header of the HDF5 filters; we add that header, so with ``decompress: false`` they travel
as ``EncodedArray`` in photonstream's (HDF5/DECTRIS) framing, bit-exact, without recompression. ``blosc`` is
decompressed with the ``blosc2`` or ``blosc`` package when one is installed; ``jpeg`` (lossy) is refused.

Outcome counts: ``source_dropped`` = uniqueIds skipped before the update reached us (IOC plugin queue, server
monitor queue, network), ``queue_overflow`` = updates we dropped because ``events`` fell behind, ``id_restarts``
= times the uniqueId went backwards (a new acquisition).

Addresses: pvaccess reads ``EPICS_PVA_*`` when it creates its client context (for the process's first channel,
and again once all are gone), so ``address_list`` (``EPICS_PVA_ADDR_LIST``, auto address list off) applies when
this source opens the process's only channel; another list while one is open is a SourceError (use another process,
as for cctbx, whose boost.python build cannot share a process with pvaccess's).

    source: {type: pva, channel: "13SIM1:Pva1:Image", address_list: "10.0.0.5", idle_timeout_s: 10}
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.config.environment import PVA_ADDR_LIST_ENV, PVA_AUTO_ADDR_LIST_ENV
from photonstream.errors import MissingDependencyError, SerializerError, SourceError
from photonstream.frames import EncodedArray, Frame, Geometry
from photonstream.sources.base import SourceInfo, registry

# NTNDArray value-union field -> numpy dtype (pvAccess sends native byte order)
UNION_DTYPES = {
    "byteValue": "i1", "ubyteValue": "u1", "shortValue": "i2", "ushortValue": "u2", "intValue": "i4",
    "uintValue": "u4", "longValue": "i8", "ulongValue": "u8", "floatValue": "f4", "doubleValue": "f8",
}  # fmt: skip
# pvData ScalarType (what codec.parameters holds for the uncompressed type) -> numpy dtype
SCALAR_TYPE_DTYPES = {1: "i1", 2: "i2", 3: "i4", 4: "i8", 5: "u1", 6: "u2", 7: "u4", 8: "u8", 9: "f4", 10: "f8"}
# areaDetector's NDDataType_t, which the pvxs converter writes there instead; used only when sizes rule out the above
ND_DATA_TYPE_DTYPES = {0: "i1", 1: "u1", 2: "i2", 3: "u2", 4: "i4", 5: "u4", 6: "i8", 7: "u8", 8: "f4", 9: "f8"}
CODECS = ("lz4", "bslz4", "blosc", "jpeg")
MAX_PIXELS = 1 << 28  # 256 Mi pixels (1 GiB of uint32): larger dimensions are refused before anything is allocated

_CLASH_HINT = "cctbx and pvaccess bundle different boost.python builds: run the pva pipeline in its own process"
_HEADER = struct.Struct(">QI")  # the HDF5 filters' header: uncompressed bytes, block bytes
_BLOCK_LENGTH = struct.Struct(">I")
_ENV_LOCK = threading.Lock()
_open_channels: dict[str, int] = {}  # address list a live pvaccess client context was created with -> open sources


class PvaOptions(PluginOptions):
    type: Literal["pva"] = "pva"
    channel: str = Field(..., min_length=1, description="the NTNDArray PV, e.g. 13SIM1:Pva1:Image")
    address_list: str | None = Field(
        None,
        min_length=1,
        description="EPICS_PVA_ADDR_LIST for the client ('host[:port] ...'; auto address list off); "
        "default: the environment's",
    )
    start_timeout_s: float = Field(30.0, gt=0, description="fail when no image arrives within this long of opening")
    idle_timeout_s: float = Field(
        10.0, gt=0, description="end the run when no image arrives for this long after the first"
    )
    max_frames: int | None = Field(None, ge=1, description="stop after this many images")
    queue_size: int = Field(
        256, ge=1, description="images held between pvaccess's thread and the pipeline; more are dropped and counted"
    )
    decompress: bool = Field(
        True, description="decompress images; false keeps lz4/bslz4 payloads as encoded arrays (no recompression)"
    )
    server_queue_size: int | None = Field(
        None,
        ge=1,
        description="monitor queue on the server (pvRequest record[queueSize=N]); at kHz rates raise it (e.g. 100) so "
        "our thread's waits for the GIL do not overrun it; default: the server's",
    )


@dataclass(slots=True)
class _Update:
    """What one NTNDArray update carried, copied out of pvapy's (reused) object on pvaccess's thread."""

    unique_id: int
    field: str
    data: np.ndarray
    sizes: list[int]
    codec: str
    codec_parameter: Any
    uncompressed_size: int
    timestamp: float
    attributes: dict[str, Any]


def _plain(value: Any) -> Any:
    """A JSON/msgpack-friendly version of an attribute value (numpy scalars and arrays become Python values)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _variant(value: Any) -> Any:
    """The content of a pvapy 'any' field: ({'value': x}, {'value': type}) -> x; empty -> None."""
    content = value[0] if isinstance(value, tuple) and value else value
    if isinstance(content, dict):
        return _plain(content.get("value")) if content else None
    return _plain(content)


def _read_update(pv: Any) -> _Update | None:
    """The image of an NTNDArray update, or None for an update without one."""
    selected = pv["value"][0] if pv["value"] else {}
    dimensions = pv["dimension"]
    if not selected or not dimensions:
        return None
    ((field, data),) = selected.items()
    codec = pv["codec"]
    stamp = pv["dataTimeStamp"]
    attributes = {a["name"]: _variant(a["value"]) for a in pv["attribute"]}
    return _Update(
        unique_id=int(pv["uniqueId"]),
        field=field,
        data=np.asarray(data),
        sizes=[int(d["size"]) for d in dimensions],
        codec=str(codec["name"]),
        codec_parameter=_variant(codec["parameters"]),
        uncompressed_size=int(pv["uncompressedSize"]),
        timestamp=stamp["secondsPastEpoch"] + stamp["nanoseconds"] * 1e-9,
        attributes=attributes,
    )


def _uncompressed_dtype(update: _Update, pixels: int) -> np.dtype:
    """The image's dtype from codec.parameters, cross-checked against uncompressedSize."""
    parameter = update.codec_parameter
    if not isinstance(parameter, int):
        raise SourceError(f"codec {update.codec!r} without the uncompressed data type in codec.parameters")
    for table in (SCALAR_TYPE_DTYPES, ND_DATA_TYPE_DTYPES):
        if parameter in table and np.dtype(table[parameter]).itemsize * pixels == update.uncompressed_size:
            return np.dtype(table[parameter])
    raise SourceError(
        f"codec {update.codec!r}: data type {parameter} in codec.parameters does not fit uncompressedSize "
        f"{update.uncompressed_size} for {pixels} pixels"
    )


def _framed(update: _Update, dtype: np.dtype) -> EncodedArray:
    """An areaDetector lz4/bslz4 payload in photonstream's HDF5-filter framing (header added, payload as is)."""
    from photonstream.codecs import bslz4_block_size

    payload = update.data.tobytes()
    total = update.uncompressed_size
    shape = tuple(reversed(update.sizes))
    if update.codec == "bslz4":
        block_bytes = bslz4_block_size(dtype.itemsize) * dtype.itemsize
        return EncodedArray(_HEADER.pack(total, block_bytes) + payload, dtype.str, shape, "bslz4")
    if len(payload) == total and total > 0:  # the HDF5 framing would read a block this long as stored raw
        payload = _lz4_block(payload, total)
    return EncodedArray(
        _HEADER.pack(total, total) + _BLOCK_LENGTH.pack(len(payload)) + payload, dtype.str, shape, "lz4"
    )


def _lz4_block(payload: bytes, size: int) -> bytes:
    try:
        import lz4.block
    except ImportError:
        raise MissingDependencyError.for_package("lz4", "the lz4 codec") from None
    return bytes(lz4.block.decompress(payload, uncompressed_size=size))


def _blosc(update: _Update, dtype: np.dtype) -> np.ndarray:
    payload = update.data.tobytes()
    try:
        import blosc2

        raw = blosc2.decompress(payload)
    except ImportError:
        try:
            import blosc
        except ImportError:
            raise SourceError("codec 'blosc' needs the blosc2 or blosc package, which is not installed") from None
        raw = blosc.decompress(payload)
    if len(raw) != update.uncompressed_size:
        raise SourceError(f"codec 'blosc': decoded {len(raw)} bytes, expected {update.uncompressed_size}")
    return np.frombuffer(raw, dtype=dtype)


def image(update: _Update, decompress: bool) -> np.ndarray | EncodedArray:
    """The update's image, shaped (ny, nx) (the dimension list reversed); a SourceError for what we cannot read."""
    shape = tuple(reversed(update.sizes))
    pixels = math.prod(shape)
    if not shape or min(shape) < 1 or pixels > MAX_PIXELS:  # a server's dimensions must not size our allocations
        raise SourceError(f"dimensions {update.sizes} are not an image's (1 to {MAX_PIXELS} pixels)")
    if not update.codec:
        if update.field not in UNION_DTYPES:
            raise SourceError(f"value field {update.field!r} is not a numeric array")
        data = update.data.astype(UNION_DTYPES[update.field], copy=False)
        if data.size != pixels:
            raise SourceError(f"{data.size} values do not fill the {' x '.join(map(str, update.sizes))} dimensions")
        return data.reshape(shape)
    if update.codec not in CODECS:
        raise SourceError(f"unknown codec {update.codec!r} (known: {', '.join(CODECS)})")
    if update.codec == "jpeg":
        raise SourceError("codec 'jpeg' is lossy and not supported: turn the IOC's codec plugin to lz4, bslz4 or blosc")
    dtype = _uncompressed_dtype(update, pixels)
    if update.codec == "blosc":
        return _blosc(update, dtype).reshape(shape)
    encoded = _framed(update, dtype)
    if not decompress:
        return encoded
    try:
        return encoded.decode()
    except SerializerError as exc:
        raise SourceError(f"codec {update.codec!r}: {exc}") from None


@registry.register
class PvaSource:
    Options: ClassVar[type[PluginOptions]] = PvaOptions

    def __init__(self, options: PvaOptions) -> None:
        self.options = options
        self._queue: queue.Queue[_Update] = queue.Queue(maxsize=options.queue_size)
        self._channel: Any = None
        self._context_key: str | None = None
        self._first: _Update | None = None
        self._error: str | None = None
        self._last_id: int | None = None
        self._closed = threading.Event()
        self.source_dropped = 0
        self.queue_overflow = 0
        self.id_restarts = 0
        self.received = 0  # updates with an image that reached the callback

    # -- pvaccess's thread --------------------------------------------------------------------------------------
    def _on_update(self, pv: Any) -> None:
        if self._closed.is_set() or self._error is not None:
            return
        try:
            update = _read_update(pv)
        except Exception as exc:  # a malformed update: events() reports it
            self._error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            return
        if update is None:
            return
        self.received += 1
        last, self._last_id = self._last_id, update.unique_id
        if last is not None:
            if update.unique_id > last:
                self.source_dropped += update.unique_id - last - 1
            else:
                self.id_restarts += 1
        try:
            self._queue.put_nowait(update)
        except queue.Full:
            self.queue_overflow += 1

    # -- the pipeline's thread ----------------------------------------------------------------------------------
    def outcome_counts(self) -> dict[str, int]:
        return {
            "source_dropped": self.source_dropped,
            "queue_overflow": self.queue_overflow,
            "id_restarts": self.id_restarts,
        }

    def open(self) -> SourceInfo:
        opts = self.options
        try:
            import pvaccess
        except ImportError:
            raise MissingDependencyError.for_package("pvapy", "the pva source", extra="pva") from None
        except TypeError as exc:  # boost.python of another package (cctbx) loaded first: pvaccess cannot start
            raise SourceError(f"pva: pvaccess cannot be loaded in this process ({exc}); {_CLASH_HINT}") from None
        self._create_channel(pvaccess)
        request = f"record[queueSize={opts.server_queue_size}]field()" if opts.server_queue_size else ""
        try:
            self._channel.monitor(self._on_update, request)
        except Exception as exc:
            self.close()
            raise SourceError(f"pva: cannot monitor {opts.channel!r}: {(str(exc).splitlines() or [''])[0]}") from None
        self._first = self._next(opts.start_timeout_s)
        if self._first is None:
            reason = self._start_failure()
            self.close()
            raise SourceError(reason)
        first = image(self._first, decompress=False)
        return SourceInfo(
            detector=opts.channel,
            geometry=Geometry(detector_shape=tuple(first.shape)),
            expected_events=opts.max_frames,
            details={
                "channel": opts.channel,
                "codec": self._first.codec or "none",
                "dtype": np.dtype(first.dtype).name,
                "address_list": self._context_key or "",
            },
        )

    def _create_channel(self, pvaccess: Any) -> None:
        opts = self.options
        with _ENV_LOCK:
            wanted = opts.address_list if opts.address_list is not None else os.environ.get(PVA_ADDR_LIST_ENV, "")
            live = [key for key, count in _open_channels.items() if count > 0]
            if live and live[0] != wanted:
                raise SourceError(
                    f"pva: this process already has a pvaccess client for address list {live[0]!r}; pvaccess reads "
                    f"EPICS_PVA_ADDR_LIST once per client, so {wanted!r} needs another process"
                )
            if opts.address_list is not None:
                os.environ[PVA_ADDR_LIST_ENV] = opts.address_list
                os.environ[PVA_AUTO_ADDR_LIST_ENV] = "NO"
            try:
                self._channel = pvaccess.Channel(opts.channel)
            except Exception as exc:
                raise SourceError(f"pva: cannot create channel {opts.channel!r}: {exc}") from None
            self._context_key = wanted
            _open_channels[wanted] = _open_channels.get(wanted, 0) + 1

    def _start_failure(self) -> str:
        opts = self.options
        where = f" (address list {self._context_key!r})" if self._context_key else ""
        if self._error is not None:
            return f"pva: malformed update on {opts.channel!r}: {self._error}"
        return f"pva: no image from channel {opts.channel!r} within {opts.start_timeout_s:g} s{where}"

    def _next(self, timeout_s: float) -> _Update | None:
        """The next update with an image, or None after ``timeout_s`` without one (checking for callback errors)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if self._error is not None or remaining <= 0:
                return None
            try:
                return self._queue.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                continue

    def events(self) -> Iterator[Frame]:
        if self._channel is None or self._first is None:
            raise SourceError("pva: events() called before open()")
        opts = self.options
        update: _Update | None = self._first
        self._first = None
        sent = 0
        while update is not None:
            yield self._frame(update)
            sent += 1
            if opts.max_frames is not None and sent >= opts.max_frames:
                return
            update = self._next(opts.idle_timeout_s)
        if self._error is not None:
            raise SourceError(f"pva: malformed update on {opts.channel!r} after {sent} images: {self._error}")

    def _frame(self, update: _Update) -> Frame:
        try:
            data = image(update, self.options.decompress)
        except SourceError as exc:
            raise SourceError(f"pva: {self.options.channel} uniqueId {update.unique_id}: {exc}") from None
        metadata = {**update.attributes, "pva_unique_id": update.unique_id}
        return Frame(event=update.unique_id, arrays={"data": data}, metadata=metadata, timestamp=update.timestamp)

    def close(self) -> None:
        self._closed.set()
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.stopMonitor()
            del channel  # the last reference: pvaccess drops the client context with its last channel
        with _ENV_LOCK:
            key, self._context_key = self._context_key, None
            if key is not None and _open_channels.get(key, 0) > 0:
                _open_channels[key] -= 1
