"""``null``: accepts and discards every message (benchmarks, dry runs); counts what it saw."""

from __future__ import annotations

from typing import ClassVar, Literal

from photonstream.config.base import PluginOptions
from photonstream.frames import Message
from photonstream.handlers.base import registry
from photonstream.serializers.base import Buffer


class NullOptions(PluginOptions):
    type: Literal["null"] = "null"
    encode: bool = True  # serialize anyway, so benchmarks measure the serializer


@registry.register
class NullHandler:
    Options: ClassVar[type[PluginOptions]] = NullOptions

    def __init__(self, options: NullOptions) -> None:
        self.options = options
        self.needs_bytes = options.encode
        self.messages = 0
        self.bytes = 0

    def open(self) -> None:
        return None

    def handle(self, message: Message, frames: list[Buffer] | None) -> None:
        self.messages += 1
        if frames:
            self.bytes += sum(f.nbytes if hasattr(f, "nbytes") else len(f) for f in frames)

    def close(self) -> None:
        return None
