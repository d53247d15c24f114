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
from photonstream.errors import SerializerError
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


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect(frame: Buffer) -> str:
    """Guess the serializer of a message from its first bytes (HDF5 magic, a CBOR map/tag, a msgpack map)."""
    head = bytes(memoryview(frame)[:8])
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if not head:
        raise SerializerError("empty message")
    first = head[0]
    if 0xA0 <= first <= 0xBF or first in (0xD8, 0xD9, 0xDA):  # CBOR map or tag (e.g. self-describe 55799)
        return "cbor-stream2"
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):  # msgpack fixmap / map16 / map32
        return "msgpack"
    raise SerializerError(f"cannot tell the format of a message starting with {head[:4].hex()}")
