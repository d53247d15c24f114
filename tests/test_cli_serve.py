"""``photonstream serve`` as a user meets it: its buffer's ports as flags, a port in use, an external buffer that
is not there, a settings mistake found while starting: one line each (never a traceback), and exit status 2.

Every port here is a free one the test picked: a ``photonstream serve`` on the default ports may run beside."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from photonstream.api.auth.ca import CertificateAuthority
from tests.buffer.support import REPO, free_port, listening
from tests.test_cli import cli


def only_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line, last; warnings of a plain-HTTP or unauthenticated setup may come before it."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca") / "ca").directory


def serve_args(ca_dir: Path, state: Path, *more: str) -> list[str]:
    return ["serve", "--insecure-http", "--ca", str(ca_dir), "--port", str(free_port()), "--state-dir", str(state),
            *more]  # fmt: skip


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


WHY_EXTERNAL = "(buffer: external, or buffer_endpoint / --buffer given without buffer: embedded)"


def local(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("listener", ["main", "token"])
def test_a_buffer_port_in_use_is_one_line_naming_the_flag(
    ca_dir: Path, tmp_path: Path, taken_port: int, listener: str
) -> None:
    ports = {"main": local(free_port()), "token": local(free_port()), listener: local(taken_port)}
    args = serve_args(ca_dir, tmp_path / "s", "--buffer-bind", ports["main"], "--buffer-token-bind", ports["token"])
    result = cli(*args)
    assert result.returncode == 2
    flag = "--buffer-bind (buffer_bind)" if listener == "main" else "--buffer-token-bind (buffer_token_bind)"
    assert only_error_line(result) == (
        f"error: {flag} {local(taken_port)}: cannot listen there: Address already in use (another photonstream "
        "serve or buffer?); give another port (or port * for any free one)"
    )


def test_a_buffer_port_in_use_from_the_settings_file_is_one_line(
    ca_dir: Path, tmp_path: Path, taken_port: int
) -> None:  # before: a 67-line traceback from the app's startup
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"ca_dir: {ca_dir}\nclient_certificates: 'off'\nbuffer_bind: {local(taken_port)}\n"
                        f"buffer_token_bind: {local(free_port())}\n")  # fmt: skip
    result = cli(*serve_args(ca_dir, tmp_path / "s", "--config", str(settings)))
    assert result.returncode == 2
    assert only_error_line(result).startswith(f"error: --buffer-bind (buffer_bind) {local(taken_port)}: cannot listen")


def test_the_api_port_in_use_is_one_line(ca_dir: Path, tmp_path: Path, taken_port: int) -> None:
    args = serve_args(ca_dir, tmp_path / "s", "--buffer-bind", local(free_port()), "--buffer-token-bind", "none")
    args[args.index("--port") + 1] = str(taken_port)
    result = cli(*args)
    assert result.returncode == 2
    assert only_error_line(result).startswith(f"error: --port {local(taken_port)}: cannot listen there")


def test_the_embedded_buffer_listens_where_the_flags_say(ca_dir: Path, tmp_path: Path) -> None:
    main, token = local(free_port()), local(free_port())
    args = serve_args(ca_dir, tmp_path / "s", "--buffer-bind", main, "--buffer-token-bind", token)
    server = subprocess.Popen(
        [sys.executable, "-m", "photonstream", *args], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (listening(main) and listening(token)) and time.monotonic() < deadline:
            assert server.poll() is None, server.communicate()[1]
            time.sleep(0.2)
        assert listening(main) and listening(token)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "Traceback" not in err, err


def test_buffer_endpoint_alone_with_nothing_there_is_refused_in_one_line(ca_dir: Path, tmp_path: Path) -> None:
    nobody = local(free_port())
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"ca_dir: {ca_dir}\nclient_certificates: 'off'\nbuffer_endpoint: {nobody}\n")
    result = cli(*serve_args(ca_dir, tmp_path / "s", "--config", str(settings)))
    assert result.returncode == 2  # before: it started, with no buffer, and said nothing
    assert only_error_line(result) == (
        f"error: buffer_endpoint {nobody}: no buffer listens there (Connection refused); an external buffer is used "
        f"{WHY_EXTERNAL}: start 'photonstream buffer serve --bind {nobody}' first, or run the embedded one with "
        "--buffer-bind"
    )


def test_buffer_endpoint_alone_says_which_external_buffer_is_used(ca_dir: Path, tmp_path: Path) -> None:
    endpoint = local(free_port())
    buffer = subprocess.Popen(
        [sys.executable, "-m", "photonstream", "buffer", "serve", "--bind", endpoint, "--security", "none"],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"ca_dir: {ca_dir}\nclient_certificates: 'off'\nbuffer_endpoint: {endpoint}\n")
    server = None
    try:
        deadline = time.monotonic() + 30
        while not listening(endpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        args = serve_args(ca_dir, tmp_path / "s", "--config", str(settings))
        server = subprocess.Popen([sys.executable, "-m", "photonstream", *args], cwd=REPO, stderr=subprocess.PIPE,
                                  text=True)  # fmt: skip
        assert server.stderr is not None
        said = [server.stderr.readline().strip() for _ in range(3)]  # a warning (no CURVE key) may come first
        assert server.poll() is None
    finally:
        for process in (server, buffer):
            if process is not None:
                process.terminate()
                process.communicate(timeout=30)
    assert f"buffer: the external buffer at {endpoint} {WHY_EXTERNAL}; none is started here" in said, said


def test_a_settings_mistake_found_while_starting_is_one_line(ca_dir: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"ca_dir: {ca_dir}\nclient_certificates: 'off'\nbuffer_options: {{memory_total: -5}}\n")
    args = serve_args(ca_dir, tmp_path / "s", "--config", str(settings), "--buffer-bind", local(free_port()),
                      "--buffer-token-bind", local(free_port()))  # fmt: skip
    result = cli(*args)
    assert result.returncode == 2
    assert only_error_line(result) == (
        "error: the service did not start: buffer.memory_total: Input should be greater than or equal to 1"
    )


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--ca-cert", "error: --ca-cert {path}: cannot load the CA certificate (no such file)"),
        ("--cert", "error: --cert {path}: cannot load the client certificate (no such file)"),
    ],
)
def test_a_missing_certificate_file_for_the_client_is_one_line(tmp_path: Path, option: str, expected: str) -> None:
    missing = tmp_path / "missing.pem"
    result = cli("request", "--url", f"https://127.0.0.1:{free_port()}", option, str(missing), "list")
    assert result.returncode == 2  # before: a 77-line traceback ending in FileNotFoundError
    assert only_error_line(result) == expected.format(path=missing)


def test_an_os_error_in_any_command_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = cli("ca", "init", str(tmp_path / "a-file" / "ca"))
    assert result.returncode == 2
    assert only_error_line(result).startswith(f"error: {tmp_path / 'a-file'}")
    result = cli("buffer", "serve", "--bind", "tcp://127.0.0.1:*", "--keys-dir", str(tmp_path / "a-file" / "keys"))
    assert result.returncode == 2
    assert only_error_line(result).startswith(f"error: {tmp_path / 'a-file'}")
