"""Serving the API with uvicorn: HTTPS with optional or required client certificates, or plain HTTP on request.

uvicorn verifies the client's certificate chain against our CA during the handshake but does not hand the
certificate to the app. ``TLSInfoH11Protocol`` does: it reads the peer certificate from the connection's SSL
object and puts it in each request's scope as the ASGI TLS extension (``scope["extensions"]["tls"]``, with
``client_cert_chain`` as PEM), the same place other ASGI servers (e.g. Hypercorn) put it. The app then checks
the certificate itself (issuer, validity, usage, revocation) on every request.

The handshake only asks for a client certificate (``ssl.CERT_OPTIONAL``) even when certificates are required: a
client without one still connects and gets a 401 saying what is missing (``photonstream.api.auth.gate``). A
certificate that is presented but does not verify against our CA (another CA's, expired) still fails the handshake.

uvicorn has no timeout for reading a request's headers: a client that sends part of a request and trickles the
rest (slowloris) holds its connection forever. ``TLSInfoH11Protocol`` closes a connection on which no request
completed and none is being answered for ``header_timeout_s`` (default 30 s); slow requests whose headers are
complete, long answers (server-sent events) and keep-alive between requests are not affected.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from photonstream.api.settings import ApiSettings
from photonstream.errors import ConfigError

log = logging.getLogger("photonstream.api")

INSECURE_WARNING = (
    "PLAIN HTTP: no TLS. Bearer tokens and stream credentials cross the network in clear text, and anyone on the "
    "path can read or alter every request. Use this only on a trusted loopback interface for development."
)


def tls_extension(transport: Any) -> dict[str, Any] | None:
    """The ASGI TLS extension for one connection, or None on plain TCP."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": ssl_object.version(),
        "cipher_suite": cipher[0] if cipher else None,
    }


HEADER_TIMEOUT_S = 30.0


class TLSInfoH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI TLS extension (client certificate) to every request's scope, and
    closing connections stalled in a request's headers (see the module docstring)."""

    header_timeout_s: float | None = HEADER_TIMEOUT_S

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._responses_done = 0
        self._header_timer: Any = None
        self._watch_headers()
        info = tls_extension(transport)
        if info is None:
            return
        app = self.app

        async def app_with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                scope.setdefault("extensions", {})["tls"] = dict(info)
            await app(scope, receive, send)

        self.app = app_with_tls

    def _watch_headers(self) -> None:
        if self.header_timeout_s is None:
            return
        done_before = self._responses_done

        def check() -> None:
            if self.transport.is_closing():
                return
            answering = self.cycle is not None and not self.cycle.response_complete
            if self._responses_done == done_before and not answering:
                self.transport.close()  # a whole period without a complete request: stalled headers
            else:
                self._watch_headers()

        self._header_timer = self.loop.call_later(self.header_timeout_s, check)

    def on_response_complete(self) -> None:
        self._responses_done += 1
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)


def server_config(
    app: Any,
    settings: ApiSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    insecure_http: bool = False,
    log_level: str = "info",
    header_timeout_s: float | None = HEADER_TIMEOUT_S,
) -> uvicorn.Config:
    """A uvicorn config: HTTPS with our CA for client certificates, or plain HTTP when explicitly asked for.
    ``header_timeout_s``: close a connection that completes no request for this long (None: never)."""
    protocol = type("TLSInfoH11Protocol", (TLSInfoH11Protocol,), {"header_timeout_s": header_timeout_s})
    common: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "http": protocol}
    if insecure_http:
        if settings.client_certificates != "off":
            raise ConfigError("--insecure-http: plain HTTP carries no client certificates; use tokens only")
        log.warning(INSECURE_WARNING)
        return uvicorn.Config(app, **common)
    if certfile is None or keyfile is None:
        raise ConfigError("--cert/--key: HTTPS needs the service certificate and key ('photonstream ca issue-service')")
    for path in (certfile, keyfile):
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such file")
    tls: dict[str, Any] = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    if settings.client_certificates != "off":
        if settings.ca_dir is None:
            raise ConfigError("--ca: client certificates need the CA directory")
        tls["ssl_ca_certs"] = str(Path(settings.ca_dir) / "ca.crt")
        # "required" too: the app refuses a request without a certificate with a 401 that says why (a page for
        # browsers, photonstream.api.auth.gate); CERT_REQUIRED would drop the connection with no word said
        tls["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
    return uvicorn.Config(app, **common, **tls)
