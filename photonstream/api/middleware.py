"""ASGI middleware: a request id on every response (and a 500 that names it), metrics, and the body-size limit.

The body limit refuses a request whose ``Content-Length`` is too large before reading any of it, and counts the
bytes of a streamed (chunked) body as they arrive, answering 413 at the first chunk past the limit: a body is
never read whole when it is too large.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("photonstream.api")


class ApiMetrics:
    """The service's own prometheus registry (several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "photonstream_api_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "photonstream_api_request_seconds",
            "time to answer a request (until the response starts)",
            ["method", "route"],
            registry=self.registry,
        )
        self.auth = Counter(
            "photonstream_api_auth_decisions",
            "authentication and authorization decisions",
            ["outcome"],
            registry=self.registry,
        )


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def request_id_of(scope: Scope) -> str | None:
    return (scope.get("state") or {}).get("request_id")


class RequestContextMiddleware:
    """Give each request an id (``X-Request-ID``), count it, and turn an unexpected exception into a plain 500."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started_at = time.perf_counter()
        status = {"code": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                route = scope.get("route")
                label = getattr(route, "path", "unmatched")
                self.metrics.latency.labels(scope["method"], label).observe(time.perf_counter() - started_at)
                self.metrics.requests.labels(scope["method"], label, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s failed (request id %s)", scope["method"], scope["path"], request_id)
            if status["code"] == 0:
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                payload = {"detail": "internal error; quote the request id when reporting it", "request_id": request_id}
                await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length before reading, else while counting chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await send_json(
            send,
            413,
            {"detail": f"request body exceeds {self.max_bytes} bytes", "request_id": request_id_of(scope)},
            [(b"connection", b"close")],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(send, 400, {"detail": "Content-Length is not a number"})
                    return
                if declared > self.max_bytes:
                    await self._refuse(scope, send)
                    return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away before sending its body
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
