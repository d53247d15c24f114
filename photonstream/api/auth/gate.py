"""With client certificates required (``serve --mtls``): every request without a valid one is answered 401.

The TLS layer only *asks* for a certificate (``ssl.CERT_OPTIONAL``, see ``photonstream.api.server``): refusing it
there would end the handshake in a way no client can explain (TLS 1.3 sends the refusal after the client thinks
it is connected: Chromium shows ERR_SOCKET_NOT_CONNECTED, httpx "Server disconnected without sending a
response"). Here a request without a certificate, or with one our CA does not vouch for now (expired, revoked, not
a user's), gets 401 with the reason: a readable page for a browser (``Accept: text/html``) saying what is needed and
how to get it, JSON ``{"detail": ...}`` for everyone else. Nothing behind the gate is reachable without a
certificate, not even /v1/health or the login page; the routes still authenticate every caller themselves.
"""

from __future__ import annotations

import html
import json
import string
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from starlette.types import ASGIApp, Receive, Scope, Send

from photonstream.api.auth.certificates import CertificateVerifier
from photonstream.api.auth.principal import client_certificate
from photonstream.api.errors import AuthenticationError
from photonstream.api.middleware import request_id_of

PAGE = Path(__file__).parents[1] / "ui" / "static" / "certificate.html"
NO_CERTIFICATE = "no client certificate: this service requires one from its CA (mutual TLS)"
PAGE_SECURITY = (
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# RFC 9110 wants a challenge with every 401; there is no registered scheme for TLS client certificates
CHALLENGE = b'Mutual-TLS realm="photonstream"'
WEBSOCKET_POLICY_VIOLATION = 1008


def wants_html(scope: Scope) -> bool:
    accept = b",".join(value for name, value in scope.get("headers", []) if name == b"accept")
    return b"text/html" in accept


class ClientCertificateGate:
    """ASGI middleware: 401 (a page for browsers) for a request that has no client certificate our CA vouches for."""

    def __init__(self, app: ASGIApp, verifier: CertificateVerifier) -> None:
        self.app = app
        self.verifier = verifier
        ca = verifier.ca_certificate
        names = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.ca_name = str(names[0].value) if names else ca.subject.rfc4514_string()
        self.ca_fingerprint = ca.fingerprint(hashes.SHA256()).hex(":").upper()
        self.template = string.Template(PAGE.read_text())

    def refusal(self, scope: Scope) -> str | None:
        """Why this request may not pass, or None when its certificate is valid now."""
        try:
            certificate = client_certificate(scope)
            if certificate is None:
                return NO_CERTIFICATE
            self.verifier.verify(certificate)
        except AuthenticationError as exc:
            return str(exc)
        return None

    def page(self, reason: str) -> bytes:
        values = {"reason": reason, "ca_name": self.ca_name, "ca_fingerprint": self.ca_fingerprint}
        return self.template.substitute({key: html.escape(value) for key, value in values.items()}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self.refusal(scope)
        if reason is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION, "reason": reason[:120]})
            return
        headers = [(b"www-authenticate", CHALLENGE), (b"cache-control", b"no-store")]
        if wants_html(scope):
            body = self.page(reason)
            headers += [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-security-policy", PAGE_SECURITY.encode()),
                (b"x-content-type-options", b"nosniff"),
            ]
        else:
            body = json.dumps({"detail": reason, "request_id": request_id_of(scope)}).encode()
            headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
