"""Garbage on the API's port (real uvicorn, HTTPS with our CA): raw bytes instead of TLS, a ClientHello full of
junk, plain HTTP to the TLS port, broken request lines and oversized headers inside TLS, and slowloris (many
partial requests held open and trickled) while another client keeps asking /v1/health.

Numbers asserted: health checks answered 200 = all of them (during every attack), 5xx answers = 0, stalled
partial requests still open after the header timeout = 0.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
import uvicorn

from photonstream.api.server import server_config
from tests.api.harness import ApiHarness, Pki
from tests.api.servers import client_tls, free_port
from tests.store.databases import DatabaseSpec

HEALTH_CHECKS = 15
SLOW_CONNECTIONS = 40
HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("api-socket")
    spec = DatabaseSpec("sqlite", root)
    harness = ApiHarness(spec, pki, root / "state", buffer_bind="tcp://127.0.0.1:*")
    port = free_port()
    config = server_config(harness.app, harness.settings, port=port, certfile=pki.service[0],
                           keyfile=pki.service[1], log_level="critical", header_timeout_s=HEADER_TIMEOUT_S)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-abuse", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(15)
    harness.close()
    spec.close()


def health(pki: Pki, address: tuple[str, int], timeout: float = 5.0) -> int:
    request = urllib.request.Request(f"https://{address[0]}:{address[1]}/v1/health")
    with urllib.request.urlopen(request, context=client_tls(pki), timeout=timeout) as response:
        return int(response.status)


def tls_connection(pki: Pki, address: tuple[str, int]) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=5)
    return client_tls(pki).wrap_socket(raw, server_hostname=address[0])


def status_of(reply: bytes) -> int | None:
    """The status code of an HTTP/1.1 reply, or None for no reply."""
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


def raw_attack(address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload`` on a bare TCP connection; what came back before the server closed (or 2 s passed)."""
    with socket.create_connection(address, timeout=2) as conn:
        with contextlib.suppress(OSError):
            conn.sendall(payload)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(4096):
                received += chunk
        return received


def tls_attack(pki: Pki, address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload`` inside a TLS connection; what came back (the server's answer, if any)."""
    with tls_connection(pki, address) as conn:
        with contextlib.suppress(OSError):  # the server may answer and close before it has read everything
            conn.sendall(payload)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(4096):
                received += chunk
                if b"\r\n\r\n" in received:
                    break
        return received


def read_response(conn: ssl.SSLSocket) -> tuple[int | None, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length."""
    received = b""
    while b"\r\n\r\n" not in received and (chunk := conn.recv(4096)):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(body) < length and (chunk := conn.recv(4096)):
        body += chunk
    return status_of(head), body


def test_garbage_bytes_and_broken_requests_get_no_5xx_and_health_stays_up(server: tuple[str, int], pki: Pki) -> None:
    rng = random.Random(5)
    hello_junk = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(500)  # a ClientHello of junk
    raw_payloads = [rng.randbytes(2048), hello_junk, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03"]
    tls_payloads = [
        rng.randbytes(1024),
        b"GET /v1/health HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
        b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ]
    statuses: list[int | None] = []
    for payload in raw_payloads:
        statuses.append(status_of(raw_attack(server, payload)))
        assert health(pki, server) == 200
    for payload in tls_payloads:
        statuses.append(status_of(tls_attack(pki, server, payload)))
        assert health(pki, server) == 200
    answered = [s for s in statuses if s is not None]
    assert [s for s in answered if s >= 500] == []
    assert statuses[: len(raw_payloads)] == [None] * len(raw_payloads)  # no HTTP without TLS
    assert len(answered) >= 4  # the broken requests inside TLS were answered (4xx), not dropped silently


def test_slowloris_partial_requests_do_not_starve_others_and_are_closed_after_the_header_timeout(
    server: tuple[str, int], pki: Pki
) -> None:
    stalled: list[ssl.SSLSocket] = []
    stop = threading.Event()

    def trickle() -> None:  # one more header byte per connection every 0.3 s: never a complete request
        while not stop.wait(0.3):
            for conn in list(stalled):
                with contextlib.suppress(OSError):
                    conn.sendall(b"a")

    for _ in range(SLOW_CONNECTIONS):
        conn = tls_connection(pki, server)
        conn.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(conn)
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        answered = [health(pki, server) for _ in range(HEALTH_CHECKS)]
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        still_open = 0
        for conn in stalled:
            conn.settimeout(0.5)
            try:
                still_open += conn.recv(1) != b""  # b"": the server closed it
            except TimeoutError:
                still_open += 1
            except OSError:
                pass  # reset: closed too
    finally:
        stop.set()
        trickler.join(5)
        for conn in stalled:
            conn.close()
    assert answered == [200] * HEALTH_CHECKS
    assert still_open == 0
    assert health(pki, server) == 200


def test_the_header_timeout_leaves_slow_but_complete_requests_alone(server: tuple[str, int], pki: Pki) -> None:
    """A request whose headers are complete is the app's business, however long its answer takes."""
    with tls_connection(pki, server) as conn:
        for piece in (b"GET /v1/health HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            conn.sendall(piece)
            time.sleep(HEADER_TIMEOUT_S / 4)  # 3/4 of the timeout in all
        assert read_response(conn)[0] == 200
        time.sleep(HEADER_TIMEOUT_S * 0.6)  # a request completed: the next period starts afresh
        conn.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(conn)[0] == 200
