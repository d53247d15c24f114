"""Handlers: where encoded messages go (zmq-push, zmq-pub, file, null, buffer). See ``base.py``."""

from photonstream.handlers.base import Handler, registry

__all__ = ["Handler", "registry"]
