"""Small helpers around pyzmq sockets: validated endpoints, bind-or-connect, and delivery tracking."""

from __future__ import annotations

import re
import time
from collections import deque

import zmq

from photonstream.errors import ConfigError

ENDPOINT = re.compile(r"^(tcp://(\*|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\*|\d{1,5})|ipc://.+|inproc://.+)$")


def check_endpoint(address: str) -> str:
    """Raise ConfigError unless ``address`` is a ZeroMQ tcp/ipc/inproc endpoint."""
    if not ENDPOINT.match(address):
        raise ConfigError(
            f"{address!r} is not a ZeroMQ endpoint (expected tcp://HOST:PORT, ipc://PATH or inproc://NAME)"
        )
    port = address.rsplit(":", 1)[-1]
    if address.startswith("tcp://") and port != "*" and not 0 < int(port) < 65536:
        raise ConfigError(f"{address!r}: port must be 1-65535")
    return address


def attach(sock: zmq.Socket, address: str, bind: bool) -> str:
    """Bind or connect ``sock``; return the actual endpoint (resolves ``tcp://host:*``)."""
    try:
        if bind:
            sock.bind(address)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.connect(address)
        return address
    except zmq.ZMQError as exc:
        verb = "bind" if bind else "connect"
        raise ConfigError(f"cannot {verb} {address}: {exc.strerror}") from None


class DeliveryTracker:
    """Remembers zero-copy sends until libzmq has handed their bytes to the kernel.

    ``wait`` at close time is what guarantees that the last (usually largest) messages of a run are not lost
    when the process exits right after the end message.
    """

    def __init__(self) -> None:
        self._pending: deque[zmq.MessageTracker] = deque()

    def add(self, tracker: zmq.MessageTracker | None) -> None:
        if tracker is None:
            return
        self._pending.append(tracker)
        while self._pending and self._pending[0].done:
            self._pending.popleft()

    def wait(self, timeout_s: float) -> int:
        """Wait until every tracked send is done or the timeout passes; return how many are still pending."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._pending[0].wait(remaining)
            except zmq.NotDone:
                break
            self._pending.popleft()
        return len(self._pending)
