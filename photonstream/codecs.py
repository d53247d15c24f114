"""Array compression codecs: ``bslz4``, ``lz4`` and ``zstd``, bit-exact for any numeric dtype and byte order.

``bslz4`` and ``lz4`` produce the byte layout of the HDF5 bitshuffle and LZ4 filters, which is also the
payload of the DECTRIS compression tag in Stream V2 (docs/stream_v2.md): a 12-byte big-endian header
(uncompressed size as uint64, block size in bytes as uint32), then per block a big-endian uint32 length and an
LZ4 block. The same bytes can be written as a direct HDF5 chunk, sent in a Stream V2 message, or decoded by
DECTRIS tools.

Implementations (measured fastest correct combination, see the module's tests and docs/stream_v2.md):
compression with ``bitshuffle`` (bslz4), ``lz4`` (lz4 block API) and ``zstandard``; decompression of bslz4/lz4
with ``dectris-compression``, which is faster than ``bitshuffle`` here and rejects corrupt input with an error
where ``bitshuffle`` can crash the process. Decompressed arrays are read-only views of the decoded bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from photonstream.errors import ConfigError, MissingDependencyError, SerializerError
from photonstream.frames import EncodedArray

CODECS = ("bslz4", "lz4", "zstd")

_HEADER = struct.Struct(">QI")  # uncompressed size (bytes), block size (bytes)
_BLOCK_LENGTH = struct.Struct(">I")
_BSHUF_TARGET_BLOCK_BYTES = 8192  # what the HDF5 bitshuffle filter picks when no block size is given
_BSHUF_MIN_BLOCK_ELEMS = 128
_LZ4_FILTER_BLOCK_BYTES = 1 << 30  # the HDF5 LZ4 filter's default block size
_ZSTD_DEFAULT_LEVEL = 3


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError.for_package(package, f"the {module.split('.')[0]} codec") from None


def _contiguous(array: np.ndarray) -> np.ndarray:
    if array.dtype.hasobject:
        raise ConfigError(f"cannot compress an array of Python objects (dtype {array.dtype})")
    return np.ascontiguousarray(array).reshape(-1)


def _byte_view(array: np.ndarray) -> memoryview:
    """The array's bytes in C order, without a copy when it is already C-contiguous."""
    return memoryview(_contiguous(array).view(np.uint8))


def bslz4_block_size(elem_size: int) -> int:
    """The block size (in elements) the HDF5 bitshuffle filter chooses for this element size."""
    block = (_BSHUF_TARGET_BLOCK_BYTES // max(elem_size, 1)) // 8 * 8
    return max(block, _BSHUF_MIN_BLOCK_ELEMS)


def bslz4_compress(array: np.ndarray) -> bytes:
    """Bitshuffle + LZ4 in the HDF5-filter framing; element size = the dtype's item size."""
    bitshuffle = _require("bitshuffle", "bitshuffle")
    flat = _contiguous(array)
    elem_size = array.dtype.itemsize
    block = bslz4_block_size(elem_size)
    header = _HEADER.pack(flat.nbytes, block * elem_size)
    if flat.size == 0:
        return header
    # bitshuffle only looks at the item size: give it plain unsigned (or opaque) elements of the same size
    elements = flat.view(f"u{elem_size}" if elem_size in (1, 2, 4, 8) else np.dtype((np.void, elem_size)))
    return header + bitshuffle.compress_lz4(elements, block).tobytes()


def lz4_compress(array: np.ndarray, level: int | None = None) -> bytes:
    """LZ4 blocks in the HDF5 LZ4-filter framing; ``level`` (1-12) switches to LZ4 high compression."""
    lz4_block = _require("lz4.block", "lz4")
    data = _byte_view(array)
    block_bytes = min(len(data), _LZ4_FILTER_BLOCK_BYTES)
    parts = [_HEADER.pack(len(data), block_bytes)]
    mode: dict[str, Any] = {} if level is None else {"mode": "high_compression", "compression": level}
    for start in range(0, len(data), max(block_bytes, 1)):
        chunk = data[start : start + block_bytes]
        packed = lz4_block.compress(chunk, store_size=False, **mode)
        if len(packed) >= len(chunk):  # the filter stores a block raw when LZ4 does not shrink it
            packed = bytes(chunk)
        parts.append(_BLOCK_LENGTH.pack(len(packed)))
        parts.append(packed)
    return b"".join(parts)


def zstd_compress(array: np.ndarray, level: int | None = None) -> bytes:
    """One zstd frame (content size included) of the array's bytes."""
    zstandard = _require("zstandard", "zstandard")
    level = _ZSTD_DEFAULT_LEVEL if level is None else level
    return bytes(zstandard.ZstdCompressor(level=level).compress(_byte_view(array)))


def _expected_bytes(dtype: np.dtype, shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _as_array(decoded: bytes, dtype: np.dtype, shape: Sequence[int], codec: str) -> np.ndarray:
    expected = _expected_bytes(dtype, shape)
    if len(decoded) != expected:
        raise SerializerError(
            f"{codec}: decoded {len(decoded)} bytes, expected {expected} bytes for {dtype} {tuple(shape)}"
        )
    return np.frombuffer(decoded, dtype=dtype).reshape(tuple(shape))


def decompress_bytes(buf: Any, algorithm: str, elem_size: int, expected: int) -> bytes:
    """The decoded bytes of a bslz4/lz4 payload that must hold exactly ``expected`` bytes."""
    if algorithm not in ("bslz4", "lz4"):
        raise SerializerError(f"unsupported compression algorithm {algorithm!r}")
    if algorithm == "bslz4" and elem_size < 1:
        raise SerializerError(f"bslz4: element size must be at least 1, got {elem_size}")
    compression = _require("dectris.compression", "dectris-compression")
    data = buf if isinstance(buf, bytes) else bytes(buf)
    if len(data) < _HEADER.size:
        raise SerializerError(f"{algorithm}: {len(data)} bytes is shorter than the 12-byte header")
    total = _HEADER.unpack_from(data)[0]
    if total != expected:  # checked first so a corrupt header cannot make us allocate its claimed size
        raise SerializerError(f"{algorithm}: header says {total} bytes, expected {expected} bytes")
    if total == 0:
        return b""
    try:
        return compression.decompress(data, algorithm, elem_size=elem_size)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializerError(f"{algorithm}: corrupt or truncated data ({exc})") from None


def bslz4_decompress(buf: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray:
    """The array from bitshuffle+LZ4 bytes in the HDF5-filter framing (the element size is the dtype's)."""
    dtype = np.dtype(dtype)
    decoded = decompress_bytes(buf, "bslz4", dtype.itemsize, _expected_bytes(dtype, shape))
    return _as_array(decoded, dtype, shape, "bslz4")


def lz4_decompress(buf: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray:
    """The array from LZ4 bytes in the HDF5-filter framing."""
    dtype = np.dtype(dtype)
    decoded = decompress_bytes(buf, "lz4", 0, _expected_bytes(dtype, shape))
    return _as_array(decoded, dtype, shape, "lz4")


def zstd_decompress(buf: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray:
    """The array from one zstd frame of its bytes."""
    zstandard = _require("zstandard", "zstandard")
    dtype = np.dtype(dtype)
    expected = _expected_bytes(dtype, shape)
    try:
        claimed = zstandard.frame_content_size(buf)
        if claimed not in (-1, expected):  # -1: size not recorded; then max_output_size bounds the output
            raise SerializerError(f"zstd: frame says {claimed} bytes, expected {expected} bytes")
        decoded = zstandard.ZstdDecompressor().decompress(buf, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise SerializerError(f"zstd: corrupt or truncated data ({exc})") from None
    return _as_array(decoded, dtype, shape, "zstd")


def encode_array(array: np.ndarray, codec: str, level: int | None = None) -> EncodedArray:
    """Compress ``array`` with ``codec``; ``level`` applies to ``lz4`` (1-12: LZ4-HC) and ``zstd``."""
    if codec == "bslz4":
        if level is not None:
            raise ConfigError("codec 'bslz4' has no compression level; leave level unset")
        data = bslz4_compress(array)
    elif codec == "lz4":
        if level is not None and not 1 <= level <= 12:
            raise ConfigError(f"lz4 level must be 1-12, got {level}")
        data = lz4_compress(array, level)
    elif codec == "zstd":
        if level is not None and not -7 <= level <= 22:
            raise ConfigError(f"zstd level must be -7..22, got {level}")
        data = zstd_compress(array, level)
    else:
        raise ConfigError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    return EncodedArray(data=data, dtype=array.dtype.str, shape=tuple(array.shape), codec=codec)


_DECODERS = {"bslz4": bslz4_decompress, "lz4": lz4_decompress, "zstd": zstd_decompress}


def decode_array(encoded: EncodedArray) -> np.ndarray:
    """The numpy array an ``EncodedArray`` holds (raises SerializerError on corrupt data or unknown codec)."""
    try:
        decoder = _DECODERS[encoded.codec]
    except KeyError:
        raise SerializerError(f"unknown codec {encoded.codec!r}; known: {', '.join(CODECS)}") from None
    try:
        dtype = np.dtype(encoded.dtype)
    except TypeError:
        raise SerializerError(f"{encoded.codec}: invalid dtype {encoded.dtype!r}") from None
    return decoder(encoded.data, dtype, encoded.shape)
