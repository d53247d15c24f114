"""``zmq-pub``: publish every message to all subscribers, with the stream id as the topic frame.

Messages are ``[topic, *serializer frames]`` where topic is ``stream_id`` encoded as UTF-8, so SUB sockets can
subscribe per stream. Plain PUB drops messages for subscribers that fall behind; ``nodrop: true`` uses XPUB's
no-drop mode so sends block (up to ``send_timeout_s``) instead. ``wait_subscribers: N`` holds the start message
until N subscribers have joined (up to ``send_timeout_s``), so nobody misses the beginning of a run.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import zmq
from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.errors import HandlerError
from photonstream.frames import Message
from photonstream.handlers._zmq import ZmqHandlerBase, ZmqOptions
from photonstream.handlers.base import registry
from photonstream.serializers.base import Buffer


class ZmqPubOptions(ZmqOptions):
    type: Literal["zmq-pub"] = "zmq-pub"
    nodrop: bool = Field(False, description="block instead of dropping when a subscriber's queue is full")
    wait_subscribers: int = Field(0, ge=0, description="subscribers to wait for before the first message")


@registry.register
class ZmqPubHandler(ZmqHandlerBase):
    Options: ClassVar[type[PluginOptions]] = ZmqPubOptions
    socket_type = zmq.XPUB

    def _configure(self, sock: zmq.Socket[Any]) -> None:
        if self.options.nodrop:  # type: ignore[attr-defined]
            sock.setsockopt(zmq.XPUB_NODROP, 1)

    def open(self) -> None:
        super().open()
        self._wait_for_subscribers()

    def _wait_for_subscribers(self) -> None:
        wanted = self.options.wait_subscribers  # type: ignore[attr-defined]
        assert self._sock is not None
        deadline = time.monotonic() + self.options.send_timeout_s
        joined = 0
        while joined < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(int(remaining * 1000), zmq.POLLIN):
                raise HandlerError(
                    f"zmq-pub {self.endpoint}: {joined} of {wanted} subscribers joined "
                    f"within {self.options.send_timeout_s:g} s"
                )
            if self._sock.recv()[:1] == b"\x01":
                joined += 1

    def _prefix(self, message: Message) -> list[Buffer]:
        return [message.stream_id.encode()]
