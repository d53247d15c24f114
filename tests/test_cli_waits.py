"""Commands that wait give up on their own: a default timeout, one line naming what they waited for, exit 1."""

from __future__ import annotations

import socket
import subprocess
import time

from tests.buffer.support import free_port, start_service
from tests.test_cli import cli


def only_error_line(result: subprocess.CompletedProcess[str], before: str | None = None) -> str:
    """The one error line; with ``before``, the one line saying what it waits for comes first and starts so."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if before is not None:
        assert len(lines) == 2 and lines[0].startswith(before), result.stderr
        lines = lines[1:]
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


def test_consume_from_a_dead_port_gives_up_after_its_default_connect_timeout() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    began = time.monotonic()
    result = cli("consume", endpoint, "xpptut15/42/no-buffer-here")
    waited = time.monotonic() - began
    assert result.returncode == 1 and 10 <= waited < 30, (result.returncode, waited)
    assert only_error_line(result, before="waiting for an answer from") == (
        f"error: buffer {endpoint}: no answer in 10 s (nothing listening there? check the address and that the "
        "buffer runs)"
    )


def test_consume_of_a_stream_that_never_starts_says_so_and_gives_up() -> None:
    service = start_service()
    try:
        endpoint = service.endpoint
        result = cli("consume", endpoint, "xpptut15/42/not-created", "--start-timeout-s", "3")
    finally:
        service.stop()
    assert result.returncode == 1
    assert only_error_line(result, before="waiting for stream xpptut15/42/not-created to start") == (
        f"error: buffer {endpoint}: stream xpptut15/42/not-created has not started after 3 s (no producer opened "
        "it: check the stream id, or that its job runs)"
    )
