"""Every source and every serializer: `photonstream run` → zmq-push → a PULL reader in another process.

Each case checks that every event arrives, in order, bit-exact against what the source itself yields, and that
the end message closes the stream with the right count.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from photonstream.config.pipeline import validate_pipeline
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.sources.base import registry as sources
from photonstream.transport.ports import free_tcp_port

ROOT = Path(__file__).resolve().parents[1]
SERIALIZERS = ["msgpack", "hdf5", "cbor-stream2"]


def hdf5_source(tmp: Path) -> dict[str, Any]:
    data = np.random.default_rng(3).integers(0, 60000, size=(7, 2, 12, 16)).astype(np.uint16)
    with h5py.File(tmp / "run.cxi", "w") as f:
        f["entry_1/data_1/data"] = data
    return {"type": "hdf5", "files": [str(tmp / "run.cxi")]}


def hdf5_follow_source(tmp: Path) -> dict[str, Any]:
    run = tmp / "live"
    run.mkdir()
    for part in range(2):
        with h5py.File(run / f"part{part}.h5", "w") as f:
            f["entry_1/data_1/data"] = np.full((3, 8, 8), part, np.float32) + np.arange(3)[:, None, None]
    (run / "END").touch()
    return {"type": "hdf5-follow", "directory": str(run), "pattern": "*.h5", "end_marker": "END"}


def psana_source(tmp: Path) -> dict[str, Any]:
    pytest.importorskip("psana")
    from photonstream.testing.xtc2 import write_xtc2_run

    write_xtc2_run(tmp / "r.xtc2", events=6, shape=(32, 48), dtype=np.float32, layout="fakecam")
    return {"type": "psana", "files": [str(tmp / "r.xtc2")], "detector": "fakecam"}


def synthetic_diffraction_source(tmp: Path) -> dict[str, Any]:
    return {"type": "synthetic-diffraction", "detector": "epix10k2m", "events": 5, "hit_fraction": 0.5, "seed": 4}


def synthetic_tof_source(tmp: Path) -> dict[str, Any]:
    return {"type": "synthetic-tof", "events": 6, "seed": 5}


def stream2_source(tmp: Path) -> dict[str, Any]:
    """A simulated DECTRIS detector (spec-built CBOR, bslz4 and lz4) feeding the pipeline's stream2 source."""
    from tests import stream2_simulator as sim

    rng = np.random.default_rng(11)
    images = [
        {
            "threshold_1": rng.integers(0, 4000, (24, 32)).astype(np.uint16),
            "threshold_2": rng.integers(0, 9, (24, 32)).astype(np.uint8),
        }
        for _ in range(4)
    ]
    messages = [sim.start_message(7, ["threshold_1", "threshold_2"], (24, 32), np.zeros((24, 32)), "uint16")]
    messages += [
        sim.image_message(
            7, i, {"threshold_1": (img["threshold_1"], "bslz4"), "threshold_2": (img["threshold_2"], "lz4")}
        )
        for i, img in enumerate(images)
    ]
    detector = sim.SimulatedDetector([*messages, sim.end_message(7)])
    detector.start()
    STREAM2_EXPECTED[:] = [Frame(event=i, arrays=img) for i, img in enumerate(images)]
    return {"type": "stream2", "address": detector.address}


STREAM2_EXPECTED: list[Frame] = []

SOURCES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "hdf5": hdf5_source,
    "hdf5-follow": hdf5_follow_source,
    "psana": psana_source,
    "synthetic-diffraction": synthetic_diffraction_source,
    "synthetic-tof": synthetic_tof_source,
    "stream2": stream2_source,
}

CASES = [(source, "msgpack") for source in SOURCES] + [
    ("hdf5", "hdf5"),
    ("hdf5", "cbor-stream2"),
    ("synthetic-diffraction", "hdf5"),
    ("synthetic-diffraction", "cbor-stream2"),
    ("psana", "cbor-stream2"),
]


def expected_frames(source: dict[str, Any]) -> list[Frame]:
    config = validate_pipeline({"source": source, "handlers": [{"type": "null"}]})
    reader = sources.create(config.source)
    reader.open()
    try:
        return list(reader.events())
    finally:
        reader.close()


def run_to_reader(tmp: Path, source: dict[str, Any], serializer: str) -> list[Any]:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = {
        "stream": {"experiment": "e2e", "run": 3, "stream_id": "det"},
        "source": source,
        "serializer": {"type": serializer},
        "handlers": [{"type": "zmq-push", "address": endpoint, "send_timeout_s": 60}],
    }
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(config))
    out = tmp / "received.pkl"
    reader = subprocess.Popen([sys.executable, "-m", "tests.pull_reader", endpoint, str(out)], cwd=ROOT)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "photonstream", "run", str(tmp / "pipeline.yaml"), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stderr
        assert reader.wait(60) == 0
    finally:
        reader.kill()
    return pickle.loads(out.read_bytes())


@pytest.mark.parametrize(("source_name", "serializer"), CASES)
def test_every_event_arrives_in_order_bit_exact(source_name: str, serializer: str, tmp_path: Path) -> None:
    if source_name not in sources.names():
        pytest.skip(f"source {source_name!r} is not registered")
    source = SOURCES[source_name](tmp_path)
    expected = list(STREAM2_EXPECTED) if source_name == "stream2" else expected_frames(source)
    assert expected, "the source yielded nothing"
    received = run_to_reader(tmp_path, source, serializer)
    assert isinstance(received[0], StartMessage) and received[0].experiment == "e2e"
    assert isinstance(received[-1], EndMessage)
    assert received[-1].reason == "completed" and received[-1].events_sent == len(expected)
    events = received[1:-1]
    assert [e.event for e in events] == [e.event for e in expected]
    for got, want in zip(events, expected, strict=True):
        assert set(got.arrays) == set(want.arrays)
        for name, array in want.arrays.items():
            assert got.arrays[name].dtype == array.dtype and got.arrays[name].shape == array.shape
            assert got.arrays[name].tobytes() == array.tobytes(), f"event {want.event} array {name} differs"
        assert [m.seq for m in received] == list(range(len(received)))
