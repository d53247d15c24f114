"""A reconnect storm after a restart (issue 13, the class of attack defect 2 came from): kill -9 of an external
CURVE-secured durable buffer while four consumers (each its own broadcast group) read a 400-frame stream, and a
crowd of hostile peers keeps connecting through the restart: CURVE with keys the buffer never granted (subscribing
to the stream), plain ZeroMQ without CURVE, and raw TCP garbage.

Numbers asserted: every legitimate consumer gets all 400 frames, none twice, and the end (``completed``); the
stream ends ``completed``; no hostile peer receives a single data message; the API answers /v1/health with 200 the
whole time (it is a separate process from the buffer, and the buffer's restart must not reach it).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from photonstream.buffer import protocol as P
from tests.adversarial.test_secured_restart import api_settings, start_external_buffer
from tests.buffer.support import free_port
from tests.faults.support import api_consumer, finish, frames_done, report, start_worker, summary_of, tally, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

httpx = pytest.importorskip("httpx")

from photonstream.api.auth.ca import CertificateAuthority  # noqa: E402
from photonstream.api.auth.tokens import issue_token  # noqa: E402
from tests.api.harness import AUDIENCE, EXPERIMENT, ISSUER, stream_request  # noqa: E402
from tests.faults.test_api_kill import Api  # noqa: E402

EVENTS = 400
RATE_HZ = 100.0
GROUPS = ("g1", "g2", "g3", "g4")


class HostileCrowd:
    """Threads that connect, subscribe and leave again as fast as they can, counting what the buffer sent them."""

    def __init__(self, endpoint: str, stream: str, server_key: str) -> None:
        self.endpoint, self.stream, self.server_key = endpoint, stream, server_key.encode()
        self.connections = 0
        self.data_messages = 0  # data the buffer handed to a peer it never granted: must stay 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._curve_stranger, daemon=True) for _ in range(3)]
        self._threads += [threading.Thread(target=self._plain_peer, daemon=True),
                          threading.Thread(target=self._garbage, daemon=True)]  # fmt: skip

    def __enter__(self) -> HostileCrowd:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _subscribe_and_listen(self, sock: zmq.Socket, listen_s: float = 0.3) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 100)
        sock.connect(self.endpoint)
        self.connections += 1
        header = {"s": self.stream, "g": "g1", "pol": "lossless", "st": "beginning", "c": 64, "m": "intruder"}
        with contextlib.suppress(zmq.Again):  # not connected (yet): the next try
            sock.send(P.envelope(P.SUB, header))
        deadline = time.monotonic() + listen_s
        while time.monotonic() < deadline and sock.poll(50):
            command, _ = P.open_envelope(sock.recv_multipart()[0])
            if command == P.MSG:
                self.data_messages += 1
        sock.close()

    def _curve_stranger(self) -> None:
        context = zmq.Context.instance()
        while not self._stop.is_set():
            public, secret = zmq.curve_keypair()  # a key pair no grant names
            sock = context.socket(zmq.DEALER)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.server_key, public, secret
            self._subscribe_and_listen(sock)

    def _plain_peer(self) -> None:
        context = zmq.Context.instance()
        while not self._stop.is_set():
            self._subscribe_and_listen(context.socket(zmq.DEALER), listen_s=0.1)

    def _garbage(self) -> None:
        host, port = self.endpoint.removeprefix("tcp://").rsplit(":", 1)
        while not self._stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=0.5) as raw:
                    raw.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"GET / HTTP/1.1\r\n\r\n" * 4)
                    self.connections += 1
            except OSError:
                time.sleep(0.05)  # the buffer is down: try again at once after it is back


def test_consumers_reconnecting_through_a_hostile_crowd_after_a_kill9_get_every_frame(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ca = CertificateAuthority.init(tmp_path / "ca", common_name="test CA")
    token = issue_token(ca, "alice", issuer=ISSUER, audience=AUDIENCE, lifetime_s=3600, experiments=(EXPERIMENT,))
    buffer = start_external_buffer(tmp_path, endpoint)
    server = Api(api_settings(tmp_path, endpoint, external=True), free_port(), token)
    workers = []
    health: list[int] = []
    watching = threading.Event()

    def watch_health() -> None:
        with httpx.Client(base_url=str(server.http.base_url), timeout=5) as client:
            while not watching.is_set():
                try:
                    health.append(client.get("/v1/health").status_code)
                except httpx.HTTPError:
                    health.append(0)
                time.sleep(0.1)

    try:
        server.start()
        source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": EVENTS,
                  "rate_hz": RATE_HZ}  # fmt: skip
        body = stream_request(pipeline={"source": source}, consumers=[{"name": group} for group in GROUPS])
        created = server.http.post("/v1/streams", json=body)
        assert created.status_code == 201, created.text
        info = created.json()
        consumer_endpoint, address, credentials = api_consumer(info, tmp_path)
        outs = [tmp_path / f"{group}.jsonl" for group in GROUPS]
        workers = [start_worker(consumer_endpoint, address, out, "--group", group, "--timeout-s", "60", *credentials)
                   for group, out in zip(GROUPS, outs, strict=True)]  # fmt: skip
        wait_for(lambda: min(map(frames_done, outs)) >= EVENTS // 4, 60, "every consumer to read a quarter")
        health_thread = threading.Thread(target=watch_health, daemon=True)
        health_thread.start()
        with HostileCrowd(endpoint, address, info["data_endpoint"]["curve"]["server_public_key"]) as crowd:
            time.sleep(0.5)  # the crowd is connecting before the kill, and keeps on through the restart
            buffer.kill()
            buffer.wait(10)
            buffer = start_external_buffer(tmp_path, endpoint)  # same port, keys and data directory
            ended = server.wait_state(info["id"], {"completed", "failed", "cancelled"}, timeout=90)
            finished = [finish(worker, f"consumer {group}", 60) for worker, group in zip(workers, GROUPS, strict=True)]
        watching.set()
        health_thread.join(10)
    finally:
        watching.set()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        server.stop()
        buffer.terminate()
        buffer.wait(15)
    assert ended["state"] == "completed", ended["reason"]
    for group, out, done in zip(GROUPS, outs, finished, strict=True):
        assert done.rc == 0, (group, done.err)
        counts = tally(EVENTS, out)
        assert counts.numbers() == (0, 0), (group, counts.lost, counts.duplicates)
        assert summary_of(out)["end_reason"] == "completed", group
    report("reconnect_storm", hostile_connections=crowd.connections, hostile_data=crowd.data_messages,
           health_polls=len(health))  # fmt: skip
    assert crowd.connections > 20, crowd.connections  # the storm happened
    assert crowd.data_messages == 0
    assert health and set(health) == {200}, sorted(set(health))
