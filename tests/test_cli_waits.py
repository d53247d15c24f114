"""Commands that wait give up on their own: a default timeout, one line naming what they waited for, exit 1."""

from __future__ import annotations

import socket
import subprocess
import time

from tests.buffer.support import free_port
from tests.test_cli import cli


def only_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_receive_says_nothing_was_sent_and_points_at_bind() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = cli("receive", endpoint, "--timeout", "1")
    assert result.returncode == 1
    assert only_error_line(result) == (
        f"error: no message from {endpoint} within 1 s: no pipeline is sending there "
        "(a handler with bind: false, as under mpirun, needs a consumer that binds: --bind)"
    )


def test_receive_bind_waits_for_a_connecting_pipeline_and_refuses_a_taken_port() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    began = time.monotonic()
    result = cli("receive", "--bind", endpoint, "--timeout", "1")
    assert result.returncode == 1 and time.monotonic() - began < 20
    assert only_error_line(result) == (
        f"error: bound {endpoint}: no pipeline connected and sent within 1 s "
        "(its zmq-push/zmq-pub handler needs bind: false and this address)"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("receive", "--bind", f"tcp://127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 2
    assert only_error_line(result).startswith(f"error: cannot bind tcp://127.0.0.1:{port}: Address already in use")
