"""Long-lived responses (server-sent events) re-check their caller while they run.

A request is authenticated when it arrives; an event stream then stays open for hours. ``CallerWatch`` runs the
same authentication again at most every ``RECHECK_S`` (the certificate against the CRL, the token and the
certificate against the revocation table, the identity's disabled flag, the credential's expiry), so a credential
revoked after the stream started ends it within a few seconds, with a final event that says why, instead of
delivering for as long as the connection stays open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from photonstream.api.deps import Services, caller
from photonstream.api.errors import AuthenticationError, PermissionDeniedError

RECHECK_S = 2.0


@dataclass(frozen=True)
class Refusal:
    """Why a long-lived response ends: the status a new request would get, and its reason."""

    status: int
    reason: str


class CallerWatch:
    """The caller of one long-lived request, authenticated again as a new request would be (refusals audited)."""

    def __init__(self, request: Request, svc: Services, every_s: float = RECHECK_S) -> None:
        self.request = request
        self.svc = svc
        self.every_s = every_s
        self._next_check = time.monotonic() + every_s  # the request itself was authenticated just now

    async def refusal(self) -> Refusal | None:
        """None while the caller still holds (or was checked less than ``every_s`` ago); else why not."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.every_s
        try:
            await run_in_threadpool(caller, self.request, self.svc, None)
        except (AuthenticationError, PermissionDeniedError) as exc:
            return Refusal(exc.http_status, str(exc))
        return None
