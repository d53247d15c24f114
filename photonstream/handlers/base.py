"""The Handler protocol and registry.

A pipeline may have several handlers. Each receives every message twice-described: the message object and its
encoded frames (``None`` for handlers whose ``needs_bytes`` is False, such as ``file``, which writes arrays
itself). ``open`` is called before the start message, ``close`` after the end message; ``close`` must not return
before every message handed to it was delivered or the handler's send timeout expired (then it raises
``HandlerError``): nothing is silently lost at exit.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from photonstream.config.base import PluginOptions
from photonstream.frames import Message
from photonstream.registry import Registry
from photonstream.serializers.base import Buffer


@runtime_checkable
class Handler(Protocol):
    Options: ClassVar[type[PluginOptions]]
    needs_bytes: ClassVar[bool]

    def open(self) -> None: ...

    def handle(self, message: Message, frames: list[Buffer] | None) -> None: ...

    def close(self) -> None: ...


registry: Registry[Handler] = Registry("handler", "photonstream.handlers")
