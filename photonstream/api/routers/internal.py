"""/v1/internal: what the service's own jobs call. Not for people: no user credential, an HMAC signature instead.

``POST /v1/internal/streams/{id}/report`` takes a job's progress report (``photonstream.reporting``). The job
proves itself with the per-stream secret the launcher put in its environment: the signature covers a timestamp
(refused outside ``report_max_skew_s``), the path and the body, and the body's ``seq`` must exceed every accepted
one (a replayed or reordered report is refused with 409). Unknown stream, no secret yet, or a wrong signature all
answer the same 401, so the endpoint tells an outsider nothing. Every decision is audited as ``job:<stream id>``.
"""

from __future__ import annotations

import hmac
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from photonstream import reporting
from photonstream.api.deps import Services, services
from photonstream.api.errors import AuthenticationError, ConflictError, MalformedBodyError
from photonstream.api.json_body import parse_json_body
from photonstream.api.schemas import ErrorBody, ReportAccepted, ReportBody, ValidationErrorBody
from photonstream.api.strict import request_body
from photonstream.errors import ConfigError
from photonstream.store.streams import StreamNotFoundError

router = APIRouter(prefix="/v1/internal", tags=["internal"])

BAD_SIGNATURE = "report: missing or bad signature"


def check_report(svc: Services, stream_id: str, path: str, headers: dict[str, str], raw: bytes) -> ReportBody:
    """The verified report, or AuthenticationError / ConflictError / a 422."""
    settings = svc.settings
    reports = svc.launcher.reports
    timestamp = headers.get(reporting.TIMESTAMP_HEADER.lower(), "")
    given = headers.get(reporting.SIGNATURE_HEADER.lower(), "")
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise AuthenticationError(BAD_SIGNATURE) from None
    secret = reports.secrets(stream_id)
    if secret is None or not secret.report_secret or not given:
        raise AuthenticationError(BAD_SIGNATURE)
    expected = reporting.signature(secret.report_secret, timestamp, path, raw)
    if not hmac.compare_digest(expected, given):
        raise AuthenticationError(BAD_SIGNATURE)
    if abs(time.time() - sent_at) > settings.report_max_skew_s:
        raise AuthenticationError(f"report: signed {time.time() - sent_at:.0f} s ago, outside the allowed skew")
    parse_json_body(raw)  # a malformed body is a 400 with its reason, as on every route
    try:
        body = ReportBody.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise RequestValidationError(errors) from None
    if not reports.accept_seq(stream_id, body.seq):
        raise ConflictError(f"report: seq {body.seq} is not newer than the last accepted report (a replay?)")
    return body


@router.post(
    "/streams/{stream_id}/report",
    response_model=ReportAccepted,
    responses={
        400: {"model": ErrorBody, "description": "a signed body that is not acceptable JSON (the reason says why)"},
        401: {"model": ErrorBody, "description": "missing or bad signature (or no such stream)"},
        409: {"model": ErrorBody, "description": "a replayed or out-of-order report"},
        413: {"model": ErrorBody, "description": "request body too large"},
        422: {"model": ValidationErrorBody, "description": "a signed body that is not a report"},
    },
    openapi_extra=request_body(ReportBody),
    summary="A job's progress report (HMAC-signed; see photonstream.reporting)",
)
async def report(stream_id: uuid.UUID, request: Request) -> ReportAccepted:
    svc = services(request)
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    request_id = (request.scope.get("state") or {}).get("request_id", "")
    return await run_in_threadpool(_report, svc, str(stream_id), request.url.path, headers, raw, request_id)


def _report(svc: Services, stream_id: str, path: str, headers: dict[str, str], raw: bytes, rid: str) -> ReportAccepted:
    identity, obj = f"job:{stream_id[:8]}", f"stream:{stream_id}"
    try:
        body = check_report(svc, stream_id, path, headers, raw)
        stream = svc.streams.get(stream_id)
        addresses = stream.data_endpoint.get("streams", [])
        if body.address and body.address not in addresses:
            raise ConfigError(f"address: {body.address!r} is not one of the stream's buffer addresses")
    except (
        AuthenticationError,
        ConflictError,
        ConfigError,
        MalformedBodyError,
        RequestValidationError,
        StreamNotFoundError,
    ) as exc:
        svc.policy.audit(identity, "stream.report", obj, "deny", str(exc)[:500], rid)
        if isinstance(exc, StreamNotFoundError):
            raise AuthenticationError(BAD_SIGNATURE) from None
        raise
    stream = svc.launcher.on_report(stream, body)
    detail = f"{body.phase} {body.address}" + (f" end {body.end.reason}" if body.end else "")
    svc.policy.audit(identity, "stream.report", obj, "allow", detail, rid)
    return ReportAccepted(accepted=True, state=stream.state)  # type: ignore[arg-type]
