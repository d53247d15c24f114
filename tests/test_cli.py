"""The command line as a user meets it: one-line errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "photonstream", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_plugins_lists_every_kind_with_options() -> None:
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    entries = {(e["kind"], e["name"]): e for e in json.loads(result.stdout)}
    for kind, name in [("source", "hdf5"), ("serializer", "msgpack"), ("handler", "zmq-push"), ("step", "roi")]:
        assert (kind, name) in entries
    assert entries[("handler", "zmq-push")]["options"]["address"]["required"] is True
    table = cli("plugins")
    assert table.returncode == 0 and "zmq-push" in table.stdout


def test_run_writes_a_cxi_file_and_reports(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "in.cxi", "w") as f:
        f["entry_1/data_1/data"] = np.arange(6 * 8 * 8, dtype=np.uint16).reshape(6, 8, 8)
    (tmp_path / "p.yaml").write_text(
        f"source: {{type: hdf5, files: ['{tmp_path / 'in.cxi'}']}}\n"
        f"handlers: [{{type: file, directory: '{tmp_path / 'out'}'}}]\n"
    )
    result = cli("run", str(tmp_path / "p.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    end = json.loads(result.stdout.strip().splitlines()[-1])
    assert end["type"] == "end" and end["events_sent"] == 6 and end["reason"] == "completed"
    (written,) = list((tmp_path / "out").glob("*.cxi"))
    with h5py.File(written) as f:
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], np.arange(6 * 8 * 8).reshape(6, 8, 8))


def test_bad_inputs_give_one_line_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("source: {type: hdf5, files: [x.h5], stride: 0}\nhandlers: [{type: null}]\n")
    (tmp_path / "nofile.yaml").write_text(
        f"source: {{type: hdf5, files: ['{tmp_path}/none.h5']}}\nhandlers: [{{type: null}}]\n"
    )
    (tmp_path / "text.h5").write_text("not hdf5")
    (tmp_path / "text.yaml").write_text(
        f"source: {{type: hdf5, files: ['{tmp_path}/text.h5']}}\nhandlers: [{{type: null}}]\n"
    )
    cases = [
        (("run", str(tmp_path / "missing.yaml")), 2, "cannot read pipeline config"),
        (("run", str(tmp_path / "bad.yaml")), 2, "source.stride"),
        (("run", str(tmp_path / "nofile.yaml")), 1, "none.h5"),
        (("run", str(tmp_path / "text.yaml")), 1, "text.h5"),
        (("receive", "not-an-endpoint"), 2, "not a ZeroMQ endpoint"),
    ]
    for args, status, expected in cases:
        result = cli(*args)
        assert result.returncode == status, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr


def test_run_serves_its_metrics_while_it_runs(tmp_path: Path) -> None:
    import time
    import urllib.request

    from photonstream.transport.ports import free_tcp_port

    port = free_tcp_port()
    (tmp_path / "p.yaml").write_text(
        "stream: {experiment: xpp00001, run: 7, stream_id: tof}\n"
        "source: {type: synthetic-tof, events: 40, rate_hz: 20}\n"
        "handlers: [{type: 'null'}]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "photonstream", "run", str(tmp_path / "p.yaml"), "--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    text = ""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "photonstream_pipeline" not in text:
            time.sleep(0.3)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert 'experiment="xpp00001"' in text and "photonstream_pipeline" in text
