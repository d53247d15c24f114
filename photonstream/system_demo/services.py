"""The demo's services in this process: the buffer (a thread) and the API with its dashboard (uvicorn, a thread)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photonstream.errors import PhotonstreamError
from photonstream.system_demo.pki import DemoPki
from photonstream.transport.ports import free_tcp_port

START_TIMEOUT_S = 60.0


class DemoServiceError(PhotonstreamError):
    """A service of the demo did not start. (500)"""


@dataclass
class ApiServer:
    """uvicorn serving the app in a thread; ``url`` once started."""

    app: Any
    server: Any
    thread: threading.Thread
    url: str
    stopped: bool = field(default=False)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_buffer() -> Any:
    """The buffer service on a free loopback port (memory only, no authentication: the embedded default)."""
    from photonstream.buffer import BufferService, BufferSettings

    service = BufferService(BufferSettings(bind="tcp://127.0.0.1:*"))
    service.start()
    return service


def api_settings(state_dir: Path, pki: DemoPki, buffer_endpoint: str, backend: str) -> Any:
    from photonstream.api.settings import ApiSettings

    backends = ["local"] if backend == "local" else ["local", backend]
    return ApiSettings(
        state_dir=state_dir,
        ca_dir=pki.ca_dir,
        client_certificates="optional",
        tokens=True,
        job_backend=backend,
        job_backends=backends,
        buffer_endpoint=buffer_endpoint,
        launcher_interval_s=0.25,
    )


def start_api(settings: Any, pki: DemoPki, host: str = "127.0.0.1") -> ApiServer:
    """The API and dashboard over HTTPS (client certificates optional) on a free port of ``host``."""
    import uvicorn

    from photonstream.api.app import create_app
    from photonstream.api.server import server_config

    app = create_app(settings)
    port = free_tcp_port(host)
    config = server_config(
        app, settings, host=host, port=port, certfile=pki.service[0], keyfile=pki.service[1], log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="photonstream-demo-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise DemoServiceError(f"the API did not start on https://{host}:{port}")
        time.sleep(0.02)
    return ApiServer(app=app, server=server, thread=thread, url=f"https://{host}:{port}")
