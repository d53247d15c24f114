"""What ``photonstream serve`` checks before it starts, so that each mistake is one line and not a traceback."""

from __future__ import annotations

import fcntl
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import ValidationError

from photonstream.api.settings import ApiSettings
from photonstream.config.base import one_line
from photonstream.errors import ConfigError

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    """``tcp://host:port`` → (host, port); None for ipc/inproc endpoints and a port ``*`` (any free one)."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]")
    return ("0.0.0.0" if host in ("*", "") else host), int(port)


def check_can_listen(endpoint: str, option: str, any_port: bool = False) -> None:
    """ConfigError naming ``option`` unless this process could listen on ``endpoint`` now; ``any_port``: the
    option takes port ``*`` (any free one), and the error says so."""
    address = tcp_address(endpoint)
    if address is None:
        return
    host, port = address
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"{option} {endpoint}: cannot resolve {host} ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and libzmq bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            taken = " (another photonstream serve or buffer?)" if exc.errno == 98 else ""
            hint = " (or port * for any free one)" if any_port else ""
            raise ConfigError(
                f"{option} {endpoint}: cannot listen there: {exc.strerror}{taken}; give another port{hint}"
            ) from None


def wait_for_previous_buffer(settings: ApiSettings, wait_s: float = 30.0) -> None:
    """Wait while a previous embedded buffer still holds the data directory's lock (a killed API's child, shutting
    down after SIGTERM from PR_SET_PDEATHSIG): its ports are free once it lets go. Returns at once otherwise."""
    from photonstream.buffer.child import LOCK_FILE

    lock_path = (settings.buffer_data_dir or settings.state_dir / "buffer") / LOCK_FILE
    try:
        handle = lock_path.open("a+")
    except OSError:
        return  # no directory yet: nobody used it
    with handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise ConfigError(f"{lock_path.parent}: still used by another buffer after {wait_s:g} s") from None
            fcntl.flock(handle, fcntl.LOCK_UN)
            return


def check_external_buffer(settings: ApiSettings, timeout_s: float = 3.0) -> str:
    """The line saying which external buffer is used; ConfigError when nothing listens there."""
    endpoint = settings.buffer_endpoint
    why = " (buffer: external, or buffer_endpoint / --buffer given without buffer: embedded)"
    address = tcp_address(endpoint)
    if address is not None:
        try:
            socket.create_connection(address, timeout=timeout_s).close()
        except OSError as exc:
            raise ConfigError(
                f"buffer_endpoint {endpoint}: no buffer listens there ({exc.strerror or exc}); an external "
                f"buffer is used{why}: start 'photonstream buffer serve --bind {endpoint}' first, or run the "
                "embedded one with --buffer-bind"
            ) from None
    return f"buffer: the external buffer at {endpoint}{why}; none is started here"


def without_token_listener(settings: ApiSettings) -> ApiSettings:
    """The same settings with ``buffer_token_bind: null`` (``--buffer-token-bind none``), validated again."""
    values = {**settings.model_dump(exclude_unset=True), "buffer_token_bind": None}
    try:
        return ApiSettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, prefix="settings")) from None


class StartupErrors:
    """An ASGI wrapper keeping the exception that failed the app's startup (its lifespan) for the caller to say
    in one line, instead of the traceback uvicorn logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.startup_error: BaseException | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_without_traceback(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                message = {**message, "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, send_without_traceback)
        except BaseException as exc:
            self.startup_error = exc
            raise
