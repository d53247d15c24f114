"""The photonstream exception tree.

Every error a user can cause is a ``PhotonstreamError`` whose message is one readable line. The CLI prints that
line; the API maps the class to an HTTP status (``http_status``); anything else is a bug.

    PhotonstreamError
    ├── ConfigError          invalid configuration or request (422)
    ├── PluginNotFoundError  unknown source / step / serializer / handler name (422)
    ├── SourceError          a source cannot read its input (unreadable file, missing dataset, not XTC2) (400)
    ├── StepError            a processing step failed on a frame (500 inside a job, reported in the end message)
    ├── SerializerError      bytes that cannot be encoded or decoded (400)
    ├── HandlerError         a handler cannot deliver (peer gone past its send timeout, disk full) (503)
    └── MissingDependencyError  an optional package is not installed (501)
"""

from __future__ import annotations


class PhotonstreamError(Exception):
    """Base of every error photonstream raises on purpose."""

    http_status = 500


class ConfigError(PhotonstreamError, ValueError):
    """Invalid configuration value; the message names the field. (422)"""

    http_status = 422


class PluginNotFoundError(ConfigError, LookupError):
    """A plugin name that is not registered; the message lists the known ones. (422)"""


class SourceError(PhotonstreamError):
    """A source could not read its input. (400)"""

    http_status = 400


class StepError(PhotonstreamError):
    """A processing step failed. (500)"""


class SerializerError(PhotonstreamError, ValueError):
    """Bytes that cannot be encoded or decoded in the named format. (400)"""

    http_status = 400


class HandlerError(PhotonstreamError):
    """A handler could not deliver a message. (503)"""

    http_status = 503


class MissingDependencyError(PhotonstreamError, ImportError):
    """An optional dependency is needed for this feature. (501)"""

    http_status = 501

    @classmethod
    def for_package(cls, package: str, feature: str, extra: str | None = None) -> MissingDependencyError:
        hint = f'pip install "photonstream[{extra}]"' if extra else f"pip install {package}"
        return cls(f"{feature} needs the '{package}' package: {hint}")
