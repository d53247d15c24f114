"""Errors of the request API, each a ``PhotonstreamError`` carrying its HTTP status."""

from __future__ import annotations

from typing import Any

from photonstream.errors import PhotonstreamError


class MalformedBodyError(PhotonstreamError):
    """A request body that is not acceptable JSON: not UTF-8, not JSON, nested too deep, a number too long. (400)"""

    http_status = 400


class AuthenticationError(PhotonstreamError):
    """No usable credential: missing, malformed, from an untrusted issuer, expired or revoked. (401)"""

    http_status = 401


class PermissionDeniedError(PhotonstreamError):
    """An authenticated caller asked for something the policy does not grant. (403)"""

    http_status = 403


class NotFoundError(PhotonstreamError, LookupError):
    """No such object, or one the caller may not see: both read the same. (404)"""

    http_status = 404


class ConflictError(PhotonstreamError):
    """The object's state does not allow this (e.g. an illegal stream transition). (409)"""

    http_status = 409


class PayloadTooLargeError(PhotonstreamError):
    """A request body above the configured limit. (413)"""

    http_status = 413


class CredentialLifetimeError(PhotonstreamError):
    """The caller's credential expires before the stream would end. (422)"""

    http_status = 422

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class CertificateAuthorityError(PhotonstreamError):
    """The CA directory is missing, incomplete or unreadable, or a CA operation was refused. (500 on a server)"""
