"""The high-rate data buffer: a replayable per-stream log with consumer groups, policies, credit and acks.

``BufferService`` runs it (embedded with ``start()``, or ``photonstream buffer serve``); producers use the
``buffer`` handler and consumers ``photonstream.client.subscribe``.
"""

from photonstream.buffer.service import BufferService, BufferSettings

__all__ = ["BufferService", "BufferSettings"]
