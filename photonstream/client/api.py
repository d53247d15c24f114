"""A typed client of the request API (httpx): a client certificate, a bearer token, or both.

    >>> with PhotonstreamClient("https://api.example:8443", cert="alice.crt", key="alice.key", ca="ca.crt") as api:
    ...     stream = api.create_stream({"experiment": "xpp00001", "runs": [1], "pipeline": {...}})
    ...     for event in api.events(stream.id):
    ...         print(event.event, event.data)

``PhotonstreamClient.from_env()`` reads PHOTONSTREAM_URL, PHOTONSTREAM_CERT, PHOTONSTREAM_KEY, PHOTONSTREAM_CA
and PHOTONSTREAM_TOKEN.
"""

from __future__ import annotations

import json
import os
import ssl
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from photonstream.api.schemas import (
    DatasetInfo,
    DatasetList,
    Health,
    Me,
    ResultPage,
    StreamInfo,
    StreamLogs,
    StreamPage,
    StreamRequest,
    StreamTransitionInfo,
)
from photonstream.config.environment import API_URL_ENV, CLIENT_CA_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV, TOKEN_ENV
from photonstream.errors import ConfigError, PhotonstreamError

M = TypeVar("M", bound=BaseModel)
FINISHED = frozenset({"completed", "failed", "cancelled"})


class ApiError(PhotonstreamError):
    """The service refused a request; ``status``, ``detail`` and ``request_id`` say how."""

    def __init__(self, status: int, detail: Any, request_id: str | None = None) -> None:
        self.status = status
        self.http_status = status
        self.detail = detail
        self.request_id = request_id
        super().__init__(f"{status}: {self.message()}")

    def message(self) -> str:
        if isinstance(self.detail, list):  # field errors
            return "; ".join(f"{e.get('field', '?')}: {e.get('msg', '')}" for e in self.detail if isinstance(e, dict))
        return str(self.detail)


class ApiUnreachableError(PhotonstreamError):
    """No answer from the service (connection refused, TLS handshake refused, timeout)."""

    http_status = 503


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event: ``state`` (a transition), ``progress``, ``result``, ``pool``, ``end`` (the stream
    finished) or ``error`` (the caller's credential was revoked or expired, or the identity disabled: the last)."""

    event: str
    data: dict[str, Any]
    id: int | None = None


def tls_context(ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None) -> Any:
    """What httpx's ``verify`` takes: trust ``ca`` (else the system's), present ``cert``/``key`` if given."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca-cert {ca}: cannot load the CA certificate ({_why(exc)})") from None
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            named = f"--cert {cert}" + (f" / --key {key}" if key else "")
            raise ConfigError(f"{named}: cannot load the client certificate ({_why(exc)})") from None
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    """ssl's errors name no file: say what went wrong in words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


class PhotonstreamClient:
    def __init__(
        self,
        url: str | None = None,
        *,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        ca: str | Path | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """Talk to ``url``; or pass a ready ``http`` client (e.g. a Starlette TestClient) instead."""
        if http is not None:
            self._http = http
            if token:
                self._http.headers["Authorization"] = f"Bearer {token}"
            return
        if not url:
            raise ConfigError("url: the service's URL is needed (--url or PHOTONSTREAM_URL)")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: Any = tls_context(ca, cert, key) if url.startswith("https:") else True
        self._http = httpx.Client(base_url=url.rstrip("/"), verify=verify, headers=headers, timeout=timeout_s)

    @classmethod
    def from_env(cls, **overrides: Any) -> PhotonstreamClient:
        values = {
            "url": os.environ.get(API_URL_ENV),
            "cert": os.environ.get(CLIENT_CERT_ENV),
            "key": os.environ.get(CLIENT_KEY_ENV),
            "ca": os.environ.get(CLIENT_CA_ENV),
            "token": os.environ.get(TOKEN_ENV),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PhotonstreamClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachableError(f"{method} {path}: no answer from the service ({exc})") from None
        self._raise_for(response)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        detail = body.get("detail", body) if isinstance(body, dict) else body
        request_id = body.get("request_id") if isinstance(body, dict) else None
        raise ApiError(response.status_code, detail, request_id or response.headers.get("x-request-id"))

    def _get(self, model: type[M], path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request("GET", path, **kwargs).json())

    # --- the API --------------------------------------------------------------------------------------------

    def health(self) -> Health:
        return self._get(Health, "/v1/health")

    def me(self) -> Me:
        return self._get(Me, "/v1/me")

    def create_stream(self, request: StreamRequest | Mapping[str, Any]) -> StreamInfo:
        """Request a stream; the answer's ``data_endpoint.curve.client_secret_key`` is shown only this once."""
        body = request.model_dump(mode="json") if isinstance(request, StreamRequest) else dict(request)
        return StreamInfo.model_validate(self._request("POST", "/v1/streams", json=body).json())

    def list_streams(
        self,
        *,
        state: str | list[str] | None = None,
        experiment: str | None = None,
        owner: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> StreamPage:
        params: list[tuple[str, Any]] = [("offset", offset), ("limit", limit)]
        for value in [state] if isinstance(state, str) else state or []:
            params.append(("state", value))
        if experiment:
            params.append(("experiment", experiment))
        if owner:
            params.append(("owner", owner))
        return self._get(StreamPage, "/v1/streams", params=params)

    def iter_streams(self, **filters: Any) -> Iterator[StreamInfo]:
        """Every stream matching ``filters``, page after page."""
        offset: int | None = 0
        while offset is not None:
            page = self.list_streams(offset=offset, **filters)
            yield from page.items
            offset = page.next_offset

    def get_stream(self, stream_id: str | uuid.UUID) -> StreamInfo:
        return self._get(StreamInfo, f"/v1/streams/{stream_id}")

    def cancel_stream(self, stream_id: str | uuid.UUID) -> StreamInfo:
        return StreamInfo.model_validate(self._request("DELETE", f"/v1/streams/{stream_id}").json())

    def logs(
        self, stream_id: str | uuid.UUID, *, tail: int | None = None, head: int | None = None, max_bytes: int = 65536
    ) -> StreamLogs:
        params: dict[str, Any] = {"max_bytes": max_bytes}
        if tail is not None:
            params["tail"] = tail
        if head is not None:
            params["head"] = head
        return self._get(StreamLogs, f"/v1/streams/{stream_id}/logs", params=params)

    def transitions(self, stream_id: str | uuid.UUID) -> list[StreamTransitionInfo]:
        response = self._request("GET", f"/v1/streams/{stream_id}/transitions")
        return TypeAdapter(list[StreamTransitionInfo]).validate_python(response.json())

    def results(
        self, stream_id: str | uuid.UUID, *, after: int = 0, kind: str | None = None, limit: int = 100
    ) -> ResultPage:
        """Results consumers published for the stream (hit rate, indexing rate, unit cell, ...), oldest first."""
        params: dict[str, Any] = {"after": after, "limit": limit}
        if kind:
            params["kind"] = kind
        return self._get(ResultPage, f"/v1/streams/{stream_id}/results", params=params)

    def datasets(self) -> list[DatasetInfo]:
        return self._get(DatasetList, "/v1/datasets").items

    def monitor(self) -> dict[str, Any]:
        """The dashboard's stream list: every stream you may see with its state, intake rate and largest lag."""
        return dict(self._request("GET", "/ui/api/streams").json())

    def monitor_stream(self, stream_id: str | uuid.UUID) -> dict[str, Any]:
        """The dashboard's view of one stream: per hop in/out/skipped/held, latency, sampled frames, results."""
        return dict(self._request("GET", f"/ui/api/streams/{stream_id}").json())

    def events(self, stream_id: str | uuid.UUID, after: int = 0) -> Iterator[StreamEvent]:
        """The stream's state changes as they happen, ending with an ``end`` event when it finishes."""
        path = f"/v1/streams/{stream_id}/events"
        try:
            with self._http.stream("GET", path, params={"after": after}, timeout=None) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        continue
                    if line:
                        name, _, value = line.partition(": ")
                        fields[name] = value
                        continue
                    if "event" in fields:
                        event_id = fields.get("id")
                        yield StreamEvent(
                            fields["event"],
                            json.loads(fields.get("data", "{}")),
                            int(event_id) if event_id and event_id.isdigit() else None,
                        )
                        if fields["event"] in ("end", "error"):  # error: the credential no longer holds
                            return
                    fields = {}
        except httpx.TransportError as exc:
            raise ApiUnreachableError(f"GET {path}: no answer from the service ({exc})") from None

    def wait(self, stream_id: str | uuid.UUID) -> StreamInfo:
        """Block until the stream finishes; its final state."""
        for _event in self.events(stream_id):
            pass
        return self.get_stream(stream_id)
