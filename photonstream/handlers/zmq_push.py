"""``zmq-push``: PUSH socket; connected PULL consumers share the messages round-robin.

Each message is sent as the serializer's frames (one frame for msgpack, hdf5 and cbor-stream2, so a DECTRIS
Stream V2 reader or CrystFEL can read it directly). Large frames go zero-copy; close waits until every message
has been handed to the network, so a run's last messages are never lost at exit.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import zmq

from photonstream.config.base import PluginOptions
from photonstream.handlers._zmq import ZmqHandlerBase, ZmqOptions
from photonstream.handlers.base import registry


class ZmqPushOptions(ZmqOptions):
    type: Literal["zmq-push"] = "zmq-push"


@registry.register
class ZmqPushHandler(ZmqHandlerBase):
    Options: ClassVar[type[PluginOptions]] = ZmqPushOptions
    socket_type = zmq.PUSH
