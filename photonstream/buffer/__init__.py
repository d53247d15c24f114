"""The high-rate data buffer: a replayable per-stream log with consumer groups, policies, credit and acks.

``BufferService`` runs it (embedded with ``start()``, or ``photonstream buffer serve``); producers use the
``buffer`` handler and consumers ``photonstream.client.subscribe``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from photonstream.buffer.service import BufferService, BufferSettings

__all__ = ["BufferService", "BufferSettings"]


def __getattr__(name: str) -> Any:
    # the service is imported on first use: a producer (the buffer handler) needs only the protocol and credentials
    if name in __all__:
        from photonstream.buffer import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
