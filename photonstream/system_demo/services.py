"""The demo's services in this process: the API with its dashboard and embedded buffer (uvicorn, a thread)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photonstream.errors import PhotonstreamError
from photonstream.system_demo.pki import DemoPki

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


def api_settings(state_dir: Path, pki: DemoPki, backend: str, api_port: int, buffer_port: int) -> Any:
    """The API on embedded defaults: SQLite in ``state_dir``, the buffer in-process (CURVE, per-stream grants)
    on ``buffer_port``, jobs on ``backend`` reporting progress to the API at ``api_port``."""
    from photonstream.api.settings import ApiSettings

    buffer = f"tcp://127.0.0.1:{buffer_port}"
    return ApiSettings(
        state_dir=state_dir,
        ca_dir=pki.ca_dir,
        client_certificates="optional",
        tokens=True,
        job_backend=backend,
        job_backends=["local"] if backend == "local" else ["local", backend],
        buffer="embedded",
        buffer_bind=buffer,
        buffer_endpoint=buffer,
        buffer_token_bind=None,
        report_url=f"https://127.0.0.1:{api_port}",
        launcher_interval_s=0.25,
        results_poll_s=0.5,
    )


def start_api(settings: Any, pki: DemoPki, port: int, host: str = "127.0.0.1") -> ApiServer:
    """The API and dashboard over HTTPS (client certificates optional) on ``host``:``port``."""
    import uvicorn

    from photonstream.api.app import create_app
    from photonstream.api.server import server_config

    app = create_app(settings)
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
