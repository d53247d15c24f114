"""kill -9 of a secured durable buffer (issue 13, defect 2): embedded in the API, and external (``buffer serve
--keys-dir``), each three times, with a stream of 400 frames created through the API (CURVE credentials for the
job and the worker).

On ebfe5d1 a restarted buffer accepted connections before it held any grant, and producers and consumers took
the first refusal as final: 265-267 of 400 frames never reached the worker and the stream ended ``failed``.
Now the grants are kept beside the durable data and loaded before the listeners bind, and a client admitted
before retries a refusal for a grace period. Expected: 0 lost, 0 duplicates at the application, ``completed``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from photonstream.api.auth.ca import CertificateAuthority  # noqa: E402
from photonstream.api.auth.tokens import issue_token  # noqa: E402
from tests.api.harness import AUDIENCE, EXPERIMENT, ISSUER, stream_request  # noqa: E402
from tests.faults.test_api_kill import Api, listening  # noqa: E402

EVENTS = 400
RATE_HZ = 100.0


def api_settings(tmp_path: Path, buffer_endpoint: str, external: bool) -> Path:
    keys = tmp_path / "buffer-keys"
    settings = {
        "state_dir": str(tmp_path / "state"), "ca_dir": str(tmp_path / "ca"), "client_certificates": "off",
        "launcher_interval_s": 0.2, "local_max_concurrent": 2, "data_root": str(tmp_path / "data" / "{experiment}"),
        "buffer_keys_dir": str(keys),
        "stream_handlers": [{"type": "buffer", "address": buffer_endpoint, "durable": True, "send_timeout_s": 60,
                             "resend_s": 0.3}],
    }  # fmt: skip
    if external:
        settings["buffer_endpoint"] = buffer_endpoint
    else:
        settings.update(buffer_bind=buffer_endpoint, buffer_token_bind=None, buffer_data_dir=str(tmp_path / "buf"))
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def start_external_buffer(tmp_path: Path, endpoint: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "photonstream.buffer.cli", "serve", "--bind", endpoint, "--keys-dir",
         str(tmp_path / "buffer-keys"), "--data-dir", str(tmp_path / "buf"), "--member-timeout-s", "2"],
        cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: listening(endpoint), 30, "the buffer to listen")
    return process


@pytest.mark.parametrize("attempt", [1, 2, 3])
@pytest.mark.parametrize("where", ["embedded", "external"])
def test_kill9_of_a_secured_durable_buffer_loses_nothing(tmp_path: Path, where: str, attempt: int) -> None:
    external = where == "external"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ca = CertificateAuthority.init(tmp_path / "ca", common_name="test CA")
    token = issue_token(ca, "alice", issuer=ISSUER, audience=AUDIENCE, lifetime_s=3600, experiments=(EXPERIMENT,))
    buffer = start_external_buffer(tmp_path, endpoint) if external else None
    server = Api(api_settings(tmp_path, endpoint, external), free_port(), token)
    worker = None
    try:
        server.start()
        source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": EVENTS,
                  "rate_hz": RATE_HZ}  # fmt: skip
        created = server.http.post("/v1/streams", json=stream_request(pipeline={"source": source}))
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        assert created.json()["data_endpoint"]["security"] == "curve"
        out = tmp_path / "worker.jsonl"
        consumer_endpoint, address, credentials = api_consumer(created.json(), tmp_path)
        worker = start_worker(consumer_endpoint, address, out, "--timeout-s", "60", *credentials)
        wait_for(lambda: frames_done(out) >= EVENTS // 4, 60, "the worker to read a quarter of the stream")
        if external:
            assert buffer is not None
            buffer.kill()
            buffer.wait(10)
            buffer = start_external_buffer(tmp_path, endpoint)  # same port, keys and data directory
        else:
            server.kill9()  # the API and its buffer
            server.start()  # the documented way: the same command, settings and state
        ended = server.wait_state(stream_id, {"completed", "failed", "cancelled"}, timeout=90)
        worked = finish(worker, "the worker", 60)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        server.stop()
        if buffer is not None:
            buffer.terminate()
            buffer.wait(15)
    counts = tally(EVENTS, out)
    report(f"secured_{where}_buffer_kill9_{attempt}", state=ended["state"], lost=counts.lost,
           duplicates=counts.duplicates)  # fmt: skip
    assert worked.rc == 0, worked.err
    assert ended["state"] == "completed", ended["reason"]
    assert counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application
    assert summary_of(out)["end_reason"] == "completed"
