"""The API under a real uvicorn server on a free local port (HTTPS with our service certificate, or plain HTTP)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from photonstream.api.server import server_config
from tests.api.harness import Pki


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: FastAPI, pki: Pki, insecure_http: bool = False) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields the base URL."""
    port = free_port()
    config = server_config(
        app,
        app.state.services.settings,
        port=port,
        certfile=None if insecure_http else pki.service[0],
        keyfile=None if insecure_http else pki.service[1],
        insecure_http=insecure_http,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"{'http' if insecure_http else 'https'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def client_tls(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    """Trust our CA; present ``cert`` (a name in ``pki.certs``) if given."""
    context = ssl.create_default_context(cafile=str(pki.ca.directory / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(*pki.certs[cert])
    return context
