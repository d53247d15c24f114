"""Serializers: messages to bytes and back (msgpack, hdf5, cbor-stream2). See ``base.py``."""

from photonstream.serializers.base import Serializer, registry

__all__ = ["Serializer", "registry"]
