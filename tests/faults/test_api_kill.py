"""kill -9 of the API (``photonstream serve``) while one of its streams runs as a local job.

What the user sees: requests fail while the API is down, but the data plane does not notice: the job (its own
session) keeps streaming into the buffer and the worker keeps reading. The API started again on the same state
re-adopts the job and records its end: the stream ends ``completed``; the worker got every frame once.

The buffer is the API's own, run as ``photonstream buffer serve --keys-dir`` beside it (an embedded buffer would die
with the API): CURVE, the API's admin key in the shared keys directory, the job writing with the producer
credential the launcher gave it and the worker reading with the consumer credential of the create response.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.buffer.support import free_port
from tests.faults.support import (
    REPO,
    api_consumer,
    environment,
    finish,
    frames_done,
    report,
    start_worker,
    summary_of,
    tally,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from photonstream.api.auth.ca import CertificateAuthority  # noqa: E402
from photonstream.api.auth.tokens import issue_token  # noqa: E402
from tests.api.harness import AUDIENCE, EXPERIMENT, ISSUER, stream_request  # noqa: E402

EVENTS = 120


class Api:
    """``photonstream serve`` (plain HTTP, bearer tokens) as a process that a test may kill and start again."""

    def __init__(self, settings: Path, port: int, token: str) -> None:
        self.settings = settings
        self.port = port
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        self.process: subprocess.Popen[bytes] | None = None
        self.log = settings.parent / "serve.log"  # every start's output, kept for the failure message

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "photonstream", "serve", "--config", str(self.settings), "--insecure-http",
                 "--port", str(self.port)],
                cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self._healthy, 40, "the API to answer")

    def _healthy(self) -> bool:
        assert self.process is not None, "the API was not started"
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the API exited ({self.process.returncode}):\n{tail}")
        try:
            return self.http.get("/v1/health").status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stream(self, stream_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/streams/{stream_id}").json()

    def wait_state(self, stream_id: str, states: set[str], timeout: float = 40) -> dict[str, Any]:
        return wait_for(lambda: (s := self.stream(stream_id))["state"] in states and s, timeout, f"a state in {states}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.http.close()


def listening(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    keys, endpoint = tmp_path / "buffer-keys", f"tcp://127.0.0.1:{free_port()}"
    buffer = subprocess.Popen(
        [sys.executable, "-m", "photonstream.buffer.cli", "serve", "--bind", endpoint, "--keys-dir", str(keys),
         "--member-timeout-s", "2"],
        cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ca = CertificateAuthority.init(tmp_path / "ca", common_name="test CA")
    token = issue_token(ca, "alice", issuer=ISSUER, audience=AUDIENCE, lifetime_s=3600, experiments=(EXPERIMENT,))
    settings = tmp_path / "api.yaml"
    settings.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "ca_dir": str(tmp_path / "ca"), "client_certificates": "off",
        "launcher_interval_s": 0.2, "local_max_concurrent": 2, "data_root": str(tmp_path / "data" / "{experiment}"),
        "buffer_endpoint": endpoint, "buffer_keys_dir": str(keys),  # the API's buffer, in a process of its own
    }))  # fmt: skip
    server = Api(settings, free_port(), token)
    try:
        wait_for(lambda: (keys / "buffer.key").exists() and listening(endpoint), 30, "the buffer to listen")
        server.start()
        yield server
    finally:
        server.stop()
        buffer.terminate()
        buffer.wait(15)


def test_kill9_of_the_api_does_not_disturb_the_stream(api: Api, tmp_path: Path) -> None:
    server = api
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": EVENTS,
              "rate_hz": 30.0}  # fmt: skip
    created = server.http.post("/v1/streams", json=stream_request(pipeline={"source": source}))
    assert created.status_code in (200, 201), created.text
    stream_id = created.json()["id"]
    streaming = server.wait_state(stream_id, {"streaming", "failed", "completed"})
    assert streaming["state"] == "streaming", streaming["reason"]
    out = tmp_path / "worker.jsonl"
    endpoint, address, credentials = api_consumer(created.json(), tmp_path)
    assert created.json()["data_endpoint"]["security"] == "curve"
    worker = start_worker(endpoint, address, out, "--timeout-s", "30", *credentials)
    try:
        wait_for(lambda: frames_done(out) >= 10, 30, "the worker to read ten frames")
        server.kill9()
        with pytest.raises(httpx.TransportError):  # what a user of the API sees meanwhile
            server.http.get("/v1/health")
        before = frames_done(out)
        time.sleep(1.0)
        read_while_down = frames_done(out) - before
        server.start()  # same settings, state and database
        ended = server.wait_state(stream_id, {"completed", "failed", "cancelled"})
        worked = finish(worker, "the worker", 30)
    finally:
        if worker.poll() is None:
            worker.kill()
    history = [t["to_state"] for t in server.http.get(f"/v1/streams/{stream_id}/transitions").json()]
    counts = tally(EVENTS, out)
    summary = summary_of(out)
    report("api_kill9", state=ended["state"], lost=counts.lost, duplicates=counts.duplicates,
           read_while_api_down=read_while_down, history=history)  # fmt: skip
    assert worked.rc == 0, worked.err
    assert read_while_down > 0  # the data plane went on without the API
    assert ended["state"] == "completed", ended["reason"]
    assert history == ["queued", "starting", "streaming", "completed"]
    assert counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application
    assert summary["end_reason"] == "completed"
