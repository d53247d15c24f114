"""Plain TCP through the same link, as a baseline for what the link itself allows (``photonstream bench wan``).

    python -m photonstream.testing.raw_tcp send --bind HOST:PORT --frames N --frame-bytes B --connections C
    python -m photonstream.testing.raw_tcp receive --connect HOST:PORT --frame-bytes B --out OUT.jsonl

The sender prints ``{"listening": [host, port]}``, waits for ``C`` connections, then writes frames ``0..N-1``
round-robin over them (frame ``i`` on connection ``i % C``), each as ``B`` bytes with nothing around them, and
closes each connection when its share is written. A receiver reads until the end and writes one record per ``B``
bytes it got, ``{"event": k, "bytes": B, "t": T}`` (``k`` counts that connection's frames; ``T`` is
``time.time()``), the same records ``photonstream.testing.stream_worker`` writes, so goodput is computed the same
way for both; the last line is ``{"summary": true, "connected_at": T0, "payload_bytes": ...}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

READ_BYTES = 256 * 1024


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def send(bind: tuple[str, int], frames: int, frame_bytes: int, connections: int) -> None:
    payload = memoryview(bytes(range(256)) * (frame_bytes // 256) + bytes(frame_bytes % 256))
    with socket.create_server(bind, reuse_port=False) as server:
        print(json.dumps({"listening": list(server.getsockname()[:2])}), flush=True)
        accepted = [server.accept()[0] for _ in range(connections)]

    def share(index: int, sock: socket.socket) -> None:
        with sock:
            for _ in range(index, frames, connections):
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)  # the receiver's close: everything was read

    threads = [threading.Thread(target=share, args=(i, s)) for i, s in enumerate(accepted)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def receive(connect: tuple[str, int], frame_bytes: int, out: Path) -> None:
    with out.open("w") as records, socket.create_connection(connect, timeout=60) as sock:
        connected_at = time.time()
        received = pending = frame = 0
        while chunk := sock.recv(READ_BYTES):
            received += len(chunk)
            pending += len(chunk)
            while pending >= frame_bytes:
                pending -= frame_bytes
                records.write(json.dumps({"event": frame, "bytes": frame_bytes, "t": time.time()}) + "\n")
                frame += 1
        records.write(json.dumps({"summary": True, "connected_at": connected_at, "payload_bytes": received}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m photonstream.testing.raw_tcp")
    commands = parser.add_subparsers(dest="command", required=True)
    sender = commands.add_parser("send")
    sender.add_argument("--bind", type=_address, required=True)
    sender.add_argument("--frames", type=int, required=True)
    sender.add_argument("--frame-bytes", type=int, required=True)
    sender.add_argument("--connections", type=int, default=1)
    receiver = commands.add_parser("receive")
    receiver.add_argument("--connect", type=_address, required=True)
    receiver.add_argument("--frame-bytes", type=int, required=True)
    receiver.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "send":
        send(args.bind, args.frames, args.frame_bytes, args.connections)
    else:
        receive(args.connect, args.frame_bytes, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
