"""A pipeline under `mpirun -n 3`: ranks split the run, every event arrives exactly once, one end message."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
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
