"""Codec throughput on one epix10k2m frame (16×352×384 uint16, Poisson background of 0.5 photons/pixel).

MB/s counts uncompressed bytes; one thread. Also times the alternative bslz4 decompressor (the ``bitshuffle``
package; photonstream uses ``dectris-compression``) and the ``cbor-stream2`` serializer on the same frame.

    python -m benchmarks.codecs [--json]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._report import machine, report
from photonstream.codecs import CODECS, bslz4_block_size, decode_array, encode_array
from photonstream.frames import Frame
from photonstream.serializers.base import create

SHAPE = (16, 352, 384)


def _seconds(call: Callable[[], Any], min_time_s: float = 0.3) -> float:
    call()
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time_s:
        call()
        runs += 1
    return elapsed / max(runs, 1)


def main(json_only: bool = False) -> None:
    frame = np.random.default_rng(0).poisson(0.5, size=SHAPE).astype(np.uint16)
    mb = frame.nbytes / 1e6
    rows: list[dict[str, Any]] = []
    for codec in CODECS:
        encoded = encode_array(frame, codec)
        rows.append(
            {
                "case": codec,
                "ratio": frame.nbytes / encoded.nbytes,
                "compress MB/s": mb / _seconds(lambda c=codec: encode_array(frame, c)),
                "decompress MB/s": mb / _seconds(lambda e=encoded: decode_array(e)),
            }
        )
    try:
        import bitshuffle

        payload = np.frombuffer(encode_array(frame, "bslz4").data, dtype=np.uint8, offset=12)
        block = bslz4_block_size(2)
        unpack = _seconds(lambda: bitshuffle.decompress_lz4(payload, SHAPE, frame.dtype, block))
        rows.append(
            {"case": "bslz4 via bitshuffle", "ratio": 0.0, "compress MB/s": 0.0, "decompress MB/s": mb / unpack}
        )
    except ImportError:
        pass
    message = Frame(event=0, arrays={"data": frame})
    for compression in ("none", "bslz4"):
        serializer = create("cbor-stream2", compression=compression)
        buffers = serializer.encode(message)
        rows.append(
            {
                "case": f"cbor-stream2 {compression}",
                "ratio": frame.nbytes / len(buffers[0]),
                "compress MB/s": mb / _seconds(lambda s=serializer: s.encode(message)),
                "decompress MB/s": mb / _seconds(lambda s=serializer, b=buffers: s.decode(b).array("data")),
            }
        )
    summary = {"bench": "codecs", "machine": machine(), "rows": rows}
    report("codecs on a 16×352×384 uint16 Poisson frame", rows, summary, json_only)


if __name__ == "__main__":
    main(json_only="--json" in sys.argv)
