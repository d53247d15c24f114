"""A buffer failure never takes the API down (issue 13, defect 1): the embedded buffer is a supervised child.

- Peers holding a stream's consumer credential announce the routing ids libzmq would hand out next (what aborted
  the whole API process on ebfe5d1); an ordinary worker then reads the stream: the API answers throughout, the
  buffer process is the same one, and the worker gets every frame once.
- The buffer process aborts anyway (SIGABRT, as a libzmq assert does) in the middle of a durable stream: the API
  keeps answering, ``/v1/health`` says the buffer is down and why, the supervisor starts it again, and the stream
  completes with nothing lost or repeated.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import zmq

from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import Credentials
from tests.adversarial.test_routing_ids import glibc_default_ids
from tests.adversarial.test_secured_restart import EVENTS, api_settings
from tests.buffer.support import free_port
from tests.faults.support import api_consumer, finish, frames_done, report, start_worker, summary_of, tally, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from photonstream.api.auth.ca import CertificateAuthority  # noqa: E402
from photonstream.api.auth.tokens import issue_token  # noqa: E402
from tests.api.harness import AUDIENCE, EXPERIMENT, ISSUER, stream_request  # noqa: E402
from tests.faults.test_api_kill import Api  # noqa: E402


def buffer_pid(api: Api) -> int:
    """The embedded buffer's process: the API's only child running photonstream.buffer.child."""
    assert api.process is not None
    tasks = Path(f"/proc/{api.process.pid}/task").iterdir()  # a restarted one is the supervisor thread's child
    children = [pid for task in tasks for pid in (task / "children").read_text().split()]
    for pid in children:
        if b"photonstream.buffer.child" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError("the API has no buffer child process")


@pytest.fixture
def api(tmp_path: Path):  # type: ignore[no-untyped-def]
    ca = CertificateAuthority.init(tmp_path / "ca", common_name="test CA")
    token = issue_token(ca, "alice", issuer=ISSUER, audience=AUDIENCE, lifetime_s=3600, experiments=(EXPERIMENT,))
    server = Api(api_settings(tmp_path, f"tcp://127.0.0.1:{free_port()}", external=False), free_port(), token)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def create(api: Api, rate_hz: float) -> dict:  # type: ignore[type-arg]
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": EVENTS,
              "rate_hz": rate_hz}  # fmt: skip
    created = api.http.post("/v1/streams", json=stream_request(pipeline={"source": source}))
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


def test_announced_routing_ids_do_not_take_the_api_down(api: Api, tmp_path: Path) -> None:
    created = create(api, rate_hz=200.0)
    endpoint, address, options = api_consumer(created, tmp_path)
    _, credentials = Credentials.from_endpoint(created)
    assert credentials is not None
    pid = buffer_pid(api)
    context = zmq.Context()
    attackers = []
    try:
        for routing_id in glibc_default_ids(6, 8):  # a user of the stream, announcing the ids libzmq would pick
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
            credentials.apply(sock)
            sock.connect(endpoint)
            sock.send(P.envelope(P.STATS))
            attackers.append(sock)
        for sock in attackers:
            assert sock.poll(5000), "an announcing peer was not even admitted: the attack did not happen"
        out = tmp_path / "worker.jsonl"
        worker = start_worker(endpoint, address, out, "--timeout-s", "60", *options)
        ended = api.wait_state(created["id"], {"completed", "failed", "cancelled"}, timeout=90)
        worked = finish(worker, "the worker", 60)
    finally:
        for sock in attackers:
            sock.close(0)
        context.term()
    assert api.http.get("/v1/health").json()["status"] == "ok"
    assert buffer_pid(api) == pid  # the same buffer process: it never died
    assert worked.rc == 0, worked.err
    assert ended["state"] == "completed", ended["reason"]
    assert tally(EVENTS, out).numbers() == (0, 0)


def test_a_buffer_that_aborts_is_reported_and_started_again(api: Api, tmp_path: Path) -> None:
    created = create(api, rate_hz=100.0)
    endpoint, address, options = api_consumer(created, tmp_path)
    out = tmp_path / "worker.jsonl"
    worker = start_worker(endpoint, address, out, "--timeout-s", "60", *options)
    try:
        wait_for(lambda: frames_done(out) >= EVENTS // 4, 60, "the worker to read a quarter of the stream")
        pid = buffer_pid(api)
        os.kill(pid, signal.SIGABRT)  # what a libzmq assertion does
        down = wait_for(lambda: (h := api.http.get("/v1/health").json())["checks"].get("buffer") != "ok" and h, 10,
                        "the health check to notice")  # fmt: skip
        assert down["status"] == "degraded" and "SIGABRT" in down["checks"]["buffer"]
        assert api.http.get(f"/v1/streams/{created['id']}").status_code == 200  # the API answers meanwhile
        wait_for(lambda: api.http.get("/v1/health").json()["status"] == "ok", 30, "the buffer to be back")
        assert buffer_pid(api) != pid
        ended = api.wait_state(created["id"], {"completed", "failed", "cancelled"}, timeout=90)
        worked = finish(worker, "the worker", 60)
    finally:
        if worker.poll() is None:
            worker.kill()
    counts = tally(EVENTS, out)
    report("embedded_buffer_abort", state=ended["state"], lost=counts.lost, duplicates=counts.duplicates)
    assert worked.rc == 0, worked.err
    assert ended["state"] == "completed", ended["reason"]
    assert counts.numbers() == (0, 0)
    assert summary_of(out)["end_reason"] == "completed"
