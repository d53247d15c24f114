"""Browser sessions: the bearer token in an HttpOnly cookie, and the CSRF rule for requests that carry it.

The dashboard's login form checks a token like any request would and stores it in ``__Host-photonstream``
(HttpOnly: page scripts cannot read it; Secure and the ``__Host-`` prefix: HTTPS only, this host only, path /;
SameSite=Strict: other sites' pages never send it). A request with the cookie authenticates as if the token came
in the Authorization header, and one that may change something (any method but GET, HEAD, OPTIONS) must also
carry the ``X-Photonstream-CSRF: 1`` header: a page of another origin cannot add that header without a CORS
preflight, which this service never grants.
"""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import Response

from photonstream.api.errors import AuthenticationError

SESSION_COOKIE = "__Host-photonstream"
CSRF_HEADER = "X-Photonstream-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_authorization(request: Request) -> str | None:
    """``Bearer <token>`` from the session cookie, or None without one; refuses an unsafe request without the
    CSRF header."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise AuthenticationError(f"a browser session may change something only with the {CSRF_HEADER} header")
    return f"Bearer {token}"


def set_session_cookie(response: Response, token: str, expires_at: dt.datetime | None) -> None:
    max_age = None
    if expires_at is not None:
        max_age = max(0, int((expires_at - dt.datetime.now(dt.UTC)).total_seconds()))
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
