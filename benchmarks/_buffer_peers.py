"""Peers of the buffer that run beside it in ``bench buffer`` when the user has them (``--peer NAME=PATH``).

- ``fastcache=BUILD_DIR``: LCLStream's C++ relay (lclstream/fastcache, built as benchmarks/peers/README.md says),
  started with ``benchmarks/peers/fastcache.sh``. A PUSH in another process connects to its input, a PULL to its
  output; the same 2 MiB messages and Python ends as the buffer's relay case, so the ratio compares the relays.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

FASTCACHE_SCRIPT = Path(__file__).resolve().parent / "peers" / "fastcache.sh"
RELAY_BYTES = 2 << 20  # the relay comparison's message size (2 MiB)


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the relay did not listen on port {port} within {timeout_s:g} s")


def fastcache_case(build_dir: str, frame_bytes: int, seconds: float) -> dict[str, Any]:
    from benchmarks.buffer import _ctx, _free_port, _run_processes, _zmq_receiver, _zmq_sender

    inlet, outlet = _free_port(), _free_port()
    relay = subprocess.Popen(
        ["bash", str(FASTCACHE_SCRIPT), build_dir, f"tcp://127.0.0.1:{inlet}", f"tcp://127.0.0.1:{outlet}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_port(inlet)
        _wait_for_port(outlet)
        ready, out = _ctx.Event(), _ctx.Queue()
        procs = [(_zmq_receiver, (f"tcp://127.0.0.1:{outlet}", zmq.PULL, False, ready, out)),
                 (_zmq_sender, (f"tcp://127.0.0.1:{inlet}", zmq.PUSH, False, frame_bytes, seconds, ready))]  # fmt: skip
        ready.set()
        return _run_processes(procs, out, 1)[0]
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()


def peer_cases(peers: dict[str, str], seconds: float) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """The cases the named peers add, and the buffer's and raw ZeroMQ's at the same size to compare with."""
    from benchmarks.buffer import buffer_case, raw_zmq

    unknown = sorted(set(peers) - {"fastcache"})
    if unknown:
        raise SystemExit(f"bench buffer: unknown peer {unknown[0]!r} (known: fastcache)")
    cases: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
    if "fastcache" in peers:
        build = peers["fastcache"]
        cases += [
            ("relay_raw", "PUSH→PULL, 2 MiB", lambda: raw_zmq(RELAY_BYTES, seconds)),
            ("relay_buffer", "buffer in memory, 2 MiB", lambda: buffer_case(RELAY_BYTES, seconds)),
            ("fastcache", "fastcache relay (peer), 2 MiB", lambda: fastcache_case(build, RELAY_BYTES, seconds)),
        ]
    return cases


PEER_RATIOS = {
    "buffer_vs_fastcache": ("relay_buffer", "fastcache"),
    "fastcache_vs_raw": ("fastcache", "relay_raw"),
    "relay_buffer_vs_raw": ("relay_buffer", "relay_raw"),
}
