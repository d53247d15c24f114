"""The Serializer protocol and registry.

``encode(message)`` returns the ZeroMQ frames of one message (a list of buffers: ``bytes``, ``memoryview`` or a
contiguous numpy array; most formats use one frame). ``decode(frames)`` rebuilds the message and raises
``SerializerError`` with one line on anything malformed or truncated; it never lets a library exception escape.
Decoding must not need the stream's start message, so any consumer can decode any message on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from photonstream.config.base import PluginOptions
from photonstream.frames import Message
from photonstream.registry import Registry

Buffer = Any  # bytes | memoryview | zmq.Frame | numpy array exposing the buffer protocol


@runtime_checkable
class Serializer(Protocol):
    Options: ClassVar[type[PluginOptions]]
    content_type: ClassVar[str]

    def encode(self, message: Message) -> list[Buffer]: ...

    def decode(self, frames: Sequence[Buffer]) -> Message: ...


registry: Registry[Serializer] = Registry("serializer", "photonstream.serializers")


def create(name: str, **options: Any) -> Serializer:
    """A serializer by name with default options: ``create("msgpack")``."""
    cls = registry.get(name)
    return cls(cls.Options(type=name, **options))  # type: ignore[call-arg]
