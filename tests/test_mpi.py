"""A pipeline under `mpirun -n 3`: ranks split the run, every event arrives exactly once, one end message."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.transport.ports import free_tcp_port

ROOT = Path(__file__).resolve().parents[1]


def mpirun() -> str:
    pytest.importorskip("mpi4py")
    for candidate in (Path(sys.prefix) / "bin" / "mpirun", shutil.which("mpirun")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip("mpirun not found (pip install mpich)")


def test_three_ranks_deliver_every_event_once_and_one_end(tmp_path: Path) -> None:
    launcher = mpirun()
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    events = 31  # not a multiple of 3: ranks get 11, 10, 10
    config = {
        "stream": {"experiment": "mpi", "run": 1, "stream_id": "det"},
        "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [64, 64], "events": events},
        "steps": [{"type": "hitfinder", "algorithm": "numpy"}],
        "handlers": [{"type": "zmq-push", "address": endpoint, "bind": False, "send_timeout_s": 60}],
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "got.pkl"
    reader = subprocess.Popen([sys.executable, "-m", "tests.pull_reader", endpoint, str(out), "--bind"], cwd=ROOT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [launcher, "-n", "3", sys.executable, "-m", "photonstream", "run", str(tmp_path / "p.yaml"), "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert reader.wait(60) == 0
    got = pickle.loads(out.read_bytes())
    starts = [m for m in got if isinstance(m, StartMessage)]
    ends = [m for m in got if isinstance(m, EndMessage)]
    frames = [m for m in got if isinstance(m, Frame)]
    assert len(starts) == 1 and got[0] is starts[0]
    assert len(ends) == 1 and got[-1] is ends[0]
    assert sorted(f.event for f in frames) == list(range(events))  # each event once
    assert len({f.seq for f in got}) == len(got)  # sequence numbers unique across ranks
    end = ends[0]
    assert end.reason == "completed" and end.events_sent == events and end.counts["read"] == events
    assert end.counts.get("hit", 0) + end.counts.get("miss", 0) == events
    summary = yaml.safe_load(run.stdout.strip().splitlines()[-1])  # rank 0 prints the combined end message
    assert summary["events_sent"] == events


def test_binding_handlers_are_refused_under_several_ranks() -> None:
    from photonstream.config.pipeline import validate_pipeline
    from photonstream.errors import ConfigError
    from photonstream.pipeline import Pipeline
    from photonstream.sources.base import Shard

    config = validate_pipeline(
        {
            "source": {"type": "synthetic-tof", "events": 3},
            "handlers": [{"type": "zmq-push", "address": "tcp://*:5999"}],
        }
    )
    with pytest.raises(ConfigError, match=r"handlers\[0\].bind: 3 MPI ranks cannot all bind"):
        Pipeline(config, Shard(0, 3))


SMALL_DETECTOR = {"detector": "custom", "shape": [2, 200, 200], "pixel_size_m": 200e-6, "module_grid": [1, 2]}


def readme_pipeline(tmp_path: Path, handler: dict) -> Path:
    """The README's first pipeline (hitfinder, drop misses, msgpack) on a free port, 40 events."""
    config = {
        "stream": {"experiment": "xpptut15", "run": 42, "stream_id": "epix10k2m"},
        "source": {"type": "synthetic-diffraction", **SMALL_DETECTOR, "events": 40, "hit_fraction": 0.5},
        "steps": [{"type": "hitfinder"}, {"type": "filter", "drop_misses": True}],
        "serializer": {"type": "msgpack"},
        "handlers": [{"type": "zmq-push", **handler}],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_ranks(pipeline: Path, ranks: int = 4, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [mpirun(), "-n", str(ranks), sys.executable, "-m", "photonstream", "run", str(pipeline), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_the_readme_pipeline_under_four_ranks_says_once_how_to_bind_on_the_consumer(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    result = run_ranks(readme_pipeline(tmp_path, {"address": endpoint}))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [  # rank 0 alone says it, and the command it names exists
        f"error: handlers[0].bind: 4 MPI ranks cannot all bind {endpoint}; set bind: false (address: {endpoint}) "
        f"so the ranks connect, and start the consumer first with `photonstream receive --bind {endpoint}`; "
        "or use the buffer handler"
    ]


def test_four_ranks_connect_to_photonstream_receive_bind(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pipeline = readme_pipeline(tmp_path, {"address": endpoint, "bind": False})
    receiver = subprocess.Popen(
        [sys.executable, "-m", "photonstream", "receive", "--bind", endpoint, "--json", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        run = run_ranks(pipeline)
        out, err = receiver.communicate(timeout=60)
    finally:
        receiver.kill()
    assert run.returncode == 0, run.stderr
    assert receiver.returncode == 0, err
    sent = json.loads(run.stdout.strip().splitlines()[-1])
    got = json.loads(out.strip().splitlines()[-1])
    assert sent["reason"] == "completed" and 0 < sent["events_sent"] < 40  # misses were dropped
    assert got["end_reason"] == "completed" and got["events"] == sent["events_sent"] == got["hits"]


def test_ranks_with_no_consumer_bound_fail_after_send_timeout_naming_it(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pipeline = readme_pipeline(tmp_path, {"address": endpoint, "bind": False, "send_timeout_s": 2})
    began = time.monotonic()
    result = run_ranks(pipeline, timeout=60)  # before: sends queued, every rank's close waited out linger_s (60 s)
    assert time.monotonic() - began < 30
    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [
        f"error: zmq-push {endpoint} (bind: false): no consumer bound there took message 0 within 2 s "
        f"(send_timeout_s); start one first, e.g. `photonstream receive --bind {endpoint}`"
    ]
