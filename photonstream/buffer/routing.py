"""Routing ids of the buffer's ROUTER listeners: assigned by the buffer, never chosen by a peer, never disclosed.

A ROUTER socket names each connection by a routing id. libzmq (4.3.5, the one pyzmq 26-27 bundles) takes the id a
peer announces in its handshake (``ZMQ_ROUTING_ID`` on its side) and otherwise generates ``00`` + a 32-bit counter.
Two defects of libzmq 4.3.5 make that dangerous for a server that faces users:

- ``router_t::identify_peer`` inserts a generated id without looking whether a peer already announced the same
  bytes, and ``routing_socket_base_t::add_out_pipe`` then fails ``zmq_assert`` (src/socket_base.cpp:2113): the
  whole process aborts (SIGABRT). A peer that announces the next generated ids kills the buffer with the next
  ordinary connection.
- the counter starts at ``generate_random()``, which is C ``rand()``, which nothing seeds: the first ROUTER of every
  process starts at ``00 6b8b4567``, the second at ``00 e43c9869`` (glibc's default sequence), so the next ids are
  known without looking.

libzmq offers no option to ignore announced ids (``ZMQ_ROUTER_HANDOVER`` only lets a newcomer take an existing id
over, which is worse), and ZAP cannot refuse them: its request carries the server socket's own id, not the peer's.
What we do instead:

- ``new_router`` seeds C ``rand()`` from the OS's CSPRNG right before libzmq draws the counter's start, so no peer
  can predict a generated id (a guess hits with odds of about connections / 2**32);
- the buffer never shows a routing id to anyone (stats name members by their member id; a subscription without one
  gets a random one) and ``the service turns away every message of a connection whose id is not one
  libzmq generated, so no peer acts under an id it chose (e.g. one a member held before it reconnected);
- the API runs its buffer in a supervised child process (``photonstream.api.buffer_process``): if the buffer dies
  anyway, the API stays up, says so in /health and starts it again (durable streams resume where they were).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import secrets
import threading

import zmq

GENERATED_ID_BYTES = 5  # libzmq's generated ids: a zero byte, then the 32-bit counter (big-endian)
ANNOUNCED_ID_REFUSAL = (
    "this connection announced its own routing id (ZMQ_ROUTING_ID); the buffer assigns routing ids itself: "
    "unset the option and connect again"
)

_seed_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        try:
            _libc = ctypes.CDLL(name)
        except OSError:
            return None
    return _libc


def seed_routing_ids() -> bool:
    """Seed C ``rand()`` (which libzmq 4.3.5 uses for a ROUTER's first generated id) from the CSPRNG; False where
    the C library cannot be reached (the ids are then glibc's default sequence: see the module docstring)."""
    libc = _c_library()
    if libc is None:
        return False
    libc.srand(ctypes.c_uint(secrets.randbits(32)))
    return True


def new_router(context: zmq.Context) -> zmq.Socket:
    """A ROUTER socket whose generated routing ids start at an unpredictable value."""
    with _seed_lock:  # the seed and the draw together, as far as this process's own sockets go
        seed_routing_ids()
        return context.socket(zmq.ROUTER)


def is_generated(routing_id: bytes) -> bool:
    """Whether libzmq generated this id (a peer that announced one of this shape cannot be told apart: with an
    unpredictable counter it only risks a collision with odds of about connections / 2**32)."""
    return len(routing_id) == GENERATED_ID_BYTES and routing_id[0] == 0
