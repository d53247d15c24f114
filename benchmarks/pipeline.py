"""``photonstream bench pipeline``: frames/s and MB/s of whole pipelines on this machine.

Cases:
- synthetic epix10k2m (16×352×384 uint16) → msgpack → null
- synthetic epix10k2m → hdf5 with bitshuffle-LZ4 → null
- psana XTC2 (512×1024 float32, fakecam layout) → hdf5 uncompressed, one event per message → zmq-push → a PULL
  reader in another process; and the same with msgpack. The closest peer (lclstreamer, one rank) reaches about
  250 frames/s (~520 MB/s) on this workload on these machines; ``xtc2_hdf5_zmq_vs_peer`` is our ratio to that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from photonstream.config.pipeline import validate_pipeline
from photonstream.pipeline import Pipeline
from photonstream.transport.ports import free_tcp_port

PEER_FRAMES_PER_S = 250.0


def _run(config: dict[str, Any]) -> tuple[float, int, int]:
    pipeline = Pipeline(validate_pipeline(config))
    started = time.perf_counter()
    end = pipeline.run()
    seconds = time.perf_counter() - started
    return seconds, end.events_sent, pipeline.stats.bytes_sent


def synthetic_case(name: str, serializer: dict[str, Any], events: int) -> dict[str, Any]:
    config = {
        "source": {"type": "synthetic-diffraction", "detector": "epix10k2m", "events": events, "seed": 1},
        "serializer": serializer,
        "handlers": [{"type": "null"}],
    }
    _run({**config, "source": {**config["source"], "events": 10}})  # warm-up
    seconds, sent, nbytes = _run(config)
    raw_mb = sent * 16 * 352 * 384 * 2 / 1e6
    return {
        "case": name,
        "frames": sent,
        "frames_per_s": sent / seconds,
        "detector_MB_per_s": raw_mb / seconds,
        "wire_MB_per_s": nbytes / seconds / 1e6,
        "incl_startup_frames_per_s": sent / seconds,
    }


def xtc2_case(name: str, serializer: dict[str, Any], xtc2: Path, events: int) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    reader = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._pull_counter", endpoint], stdout=subprocess.PIPE, text=True
    )
    config = {
        "source": {"type": "psana", "files": [str(xtc2)], "detector": "fakecam"},
        "serializer": serializer,
        "handlers": [{"type": "zmq-push", "address": endpoint, "hwm": 50}],
    }
    started = time.perf_counter()
    _, sent, _ = _run(config)
    out, _ = reader.communicate(timeout=120)
    total = time.perf_counter() - started
    result = json.loads(out)
    steady = result["messages"] / result["seconds"] if result["seconds"] > 0 else 0.0
    return {
        "case": name,
        "frames": result["messages"],
        "frames_per_s": steady,
        "detector_MB_per_s": steady * 512 * 1024 * 4 / 1e6,
        "wire_MB_per_s": result["bytes"] / result["seconds"] / 1e6,
        "incl_startup_frames_per_s": sent / total,
    }


def main(events: int = 300, json_only: bool = False) -> dict[str, Any]:
    rows = [
        synthetic_case("synthetic epix10k2m → msgpack → null", {"type": "msgpack"}, events),
        synthetic_case("synthetic epix10k2m → hdf5+bslz4 → null", {"type": "hdf5", "compression": "bslz4"}, events),
    ]
    summary: dict[str, Any] = {
        "synthetic_msgpack_fps": round(rows[0]["frames_per_s"], 1),
        "synthetic_hdf5_bslz4_fps": round(rows[1]["frames_per_s"], 1),
    }
    try:
        from photonstream.testing.xtc2 import write_xtc2_run

        with tempfile.TemporaryDirectory(prefix="photonstream-bench-") as tmp:
            import numpy as np

            xtc2 = Path(tmp) / "fakecam.xtc2"
            write_xtc2_run(xtc2, events=events, shape=(512, 1024), dtype=np.float32, layout="fakecam")
            rows.append(xtc2_case("psana XTC2 → hdf5 → zmq-push → PULL", {"type": "hdf5"}, xtc2, events))
            rows.append(xtc2_case("psana XTC2 → msgpack → zmq-push → PULL", {"type": "msgpack"}, xtc2, events))
        summary["xtc2_hdf5_zmq_fps"] = round(rows[2]["frames_per_s"], 1)
        summary["xtc2_hdf5_zmq_mbps"] = round(rows[2]["detector_MB_per_s"], 1)
        summary["xtc2_msgpack_zmq_fps"] = round(rows[3]["frames_per_s"], 1)
        summary["xtc2_hdf5_zmq_vs_peer"] = round(rows[2]["frames_per_s"] / PEER_FRAMES_PER_S, 2)
    except ImportError as exc:
        summary["xtc2_skipped"] = f"psana not installed ({exc})"
    summary["events"] = events
    summary["machine"] = machine()
    report("photonstream bench pipeline", rows, summary, json_only)
    return summary


if __name__ == "__main__":
    main()
