"""Missing and corrupt data-plane security files fail closed, with one clear line (issue 13, the class of defect 7).

``photonstream buffer serve --keys-dir``: a server key pair that is not one, an admin key that is not one, or an
``admins`` path that is not a directory is one ``error:`` line and exit 2 (no traceback). Before: keys of the wrong
length or outside the Z85 alphabet got as far as ZeroMQ, whose EINVAL left a socket open, so ``context.term()``
hung and the process never exited. A missing ``admins/`` or a corrupt ``access.json`` (the kept grants) starts a
buffer that admits no stream credential until the API sends the grants again. An admin key that turns corrupt while
the buffer serves is ignored with one warning; before, its reading raised in the ZAP handler and ended the service.

A client given a corrupt credential (the create response of ``request create --save``, the job's environment or
secrets file) gets one ``ConfigError`` line; before: KeyError, AttributeError, UnicodeDecodeError or ZeroMQ's bare
"Invalid argument" as a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from photonstream.buffer import BufferService, BufferSettings
from photonstream.buffer.access import ACCESS_FILE
from photonstream.buffer.cli import fetch_stats
from photonstream.buffer.credentials import Credentials, ensure_keypair
from photonstream.client import ConsumerError, subscribe
from photonstream.errors import ConfigError
from photonstream.job_secrets import SECRETS_FILE_ENV
from tests.buffer.support import REPO, free_port, listening, wait_until
from tests.buffer.test_security import StreamKeys, write_stream

pytestmark = pytest.mark.timeout(120)

STREAM = "exp/1/aaaa"
GOOD_KEY = "x" * 40  # decodes as Z85
SERVE = [sys.executable, "-m", "photonstream.buffer.cli", "serve"]


def serve_args(tmp_path: Path, port: int = 0) -> list[str]:
    bind = f"tcp://127.0.0.1:{port}" if port else "tcp://127.0.0.1:*"
    return [*SERVE, "--bind", bind, "--keys-dir", str(tmp_path / "keys"), "--data-dir", str(tmp_path / "data")]


def key_file(public: str, secret: str | None = None) -> str:
    text = f'metadata\ncurve\n    public-key = "{public}"\n'
    return text + (f'    secret-key = "{secret}"\n' if secret is not None else "")


SERVER_DAMAGE = {
    "a secret key file of garbage": ("buffer.key_secret", "garbage\n", "cannot read the CURVE key pair"),
    "no secret half": ("buffer.key_secret", key_file(GOOD_KEY), "holds no secret key"),
    "keys of the wrong length": ("buffer.key_secret", key_file("abc", "def"), "public key is corrupt"),
    "a secret outside Z85": ("buffer.key_secret", key_file(GOOD_KEY, "~" * 39 + " "), "secret key is corrupt"),
    "a secret key file that is a directory": ("buffer.key_secret", None, "Is a directory"),
    "an admin key of garbage": ("admins/api.key", "garbage\n", "cannot read the CURVE public key"),
    "an admin key outside Z85": ("admins/api.key", key_file("é" * 40), "public key is corrupt"),
    "admins that is a file": ("admins", "not a directory\n", "not a directory"),
}


@pytest.mark.parametrize("damage", list(SERVER_DAMAGE))
def test_a_corrupt_key_file_stops_serve_with_one_error_line(tmp_path: Path, damage: str) -> None:
    name, content, problem = SERVER_DAMAGE[damage]
    broken = tmp_path / "keys" / name
    broken.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        broken.mkdir()
    else:
        broken.write_text(content)
    done = subprocess.run(serve_args(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and problem in errors[0], done.stderr


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[str, str]:
    """The API's admin key pair in keys/admins (its public half is what the buffer trusts)."""
    return ensure_keypair(tmp_path / "keys" / "admins", "api")


class Served:
    """``buffer serve`` in a subprocess, its stderr kept in a file."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.log = tmp_path / f"serve-{port}-{time.monotonic_ns()}.err"
        with self.log.open("w") as err:
            self.process = subprocess.Popen(serve_args(tmp_path, port), cwd=REPO, stderr=err)
        wait_until(lambda: self.process.poll() is not None or listening(self.endpoint), 30, "the buffer to listen")
        assert self.process.poll() is None, self.stderr()
        self.public_key = (tmp_path / "keys" / "buffer.key").read_text().split('"')[1]

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


@pytest.fixture()
def served(tmp_path: Path, keys: tuple[str, str]) -> Iterator[Any]:
    started: list[Served] = []

    def start() -> Served:
        started.append(Served(tmp_path, free_port()))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.stop()


def refused(endpoint: str, credentials: Credentials) -> str:
    """The refusal of a consumer with these credentials ('' if it was let in)."""
    try:
        list(subscribe(endpoint, STREAM, credentials=credentials, timeout_s=5))
    except ConsumerError as exc:
        return str(exc)
    return ""


def kept_grants_of_a_written_stream(tmp_path: Path, stream: StreamKeys) -> None:
    """A buffer that knew ``stream`` (grant kept in access.json beside its durable data), stopped."""
    settings = BufferSettings.build(bind="tcp://127.0.0.1:*", keys_dir=tmp_path / "keys", security="curve",
                                    data_dir=tmp_path / "data")  # fmt: skip
    service = BufferService(settings)
    service.start()
    try:
        service.access.register([stream.entry()])
        write_stream(service, stream, 3)
        consumer = stream.consumer_curve(service)
        assert refused(service.endpoint, consumer) == ""
    finally:
        service.stop()
    assert STREAM in (tmp_path / "data" / ACCESS_FILE).read_text()


@pytest.mark.parametrize(
    "corruption", ["garbage", "truncated", "a list", "entries not a list", "a bad principal", "a directory"]
)
def test_corrupt_kept_grants_start_a_buffer_that_admits_no_stream_credential(
    tmp_path: Path, keys: tuple[str, str], served: Any, corruption: str
) -> None:
    stream = StreamKeys(STREAM)
    kept_grants_of_a_written_stream(tmp_path, stream)
    kept = tmp_path / "data" / ACCESS_FILE
    text = kept.read_text()
    kept.unlink()
    if corruption == "a directory":
        kept.mkdir()
    else:
        entry = {**stream.entry(), "consumers": ["anonymous"]}
        kept.write_text({
            "garbage": "\x00\x01 not json", "truncated": text[: len(text) // 2], "a list": "[]",
            "entries not a list": '{"entries": 5}', "a bad principal": json.dumps({"entries": [entry]}),
        }[corruption])  # fmt: skip
    buffer = served()
    consumer = Credentials.curve(buffer.public_key, *stream.consumer)
    assert "refused the credentials" in refused(buffer.endpoint, consumer)
    admin = Credentials.curve(buffer.public_key, *keys)
    assert fetch_stats(buffer.endpoint, 5, admin)["service"]["auth_refused"] >= 1  # the admin still gets in
    warnings = [line for line in buffer.stderr().splitlines() if ACCESS_FILE in line]
    assert len(warnings) == 1 and "ignoring the kept grants" in warnings[0], buffer.stderr()
    assert "Traceback" not in buffer.stderr()


def test_a_missing_admins_directory_serves_no_admin_until_a_key_appears(
    tmp_path: Path, served: Any, keys: tuple[str, str]
) -> None:
    (tmp_path / "keys" / "admins" / "api.key").rename(tmp_path / "api.key")
    (tmp_path / "keys" / "admins" / "api.key_secret").unlink()
    (tmp_path / "keys" / "admins").rmdir()
    buffer = served()
    admin = Credentials.curve(buffer.public_key, *keys)
    with pytest.raises(ConsumerError, match="no answer"):  # the handshake is refused: nothing comes back
        fetch_stats(buffer.endpoint, 2, admin)
    (tmp_path / "keys" / "admins").mkdir()
    (tmp_path / "api.key").rename(tmp_path / "keys" / "admins" / "api.key")  # what the API does when it starts
    assert wait_until(lambda: _answers(buffer.endpoint, admin), 20, "the new admin key to be read")


def _answers(endpoint: str, credentials: Credentials) -> bool:
    try:
        fetch_stats(endpoint, 1, credentials)
    except ConsumerError:
        return False
    return True


def test_an_admin_key_that_turns_corrupt_while_serving_is_ignored_and_the_buffer_goes_on(
    tmp_path: Path, served: Any, keys: tuple[str, str]
) -> None:
    buffer = served()
    admin = Credentials.curve(buffer.public_key, *keys)
    assert _answers(buffer.endpoint, admin)
    (tmp_path / "keys" / "admins" / "half-written.key").write_text("public-key = \n")
    time.sleep(1.1)  # the admin directory is read at most once a second, by a handshake of an unknown key
    stranger = Credentials.curve(buffer.public_key, *(k.decode() for k in zmq.curve_keypair()))
    for _ in range(3):
        assert not _answers(buffer.endpoint, stranger)
    assert _answers(buffer.endpoint, admin), buffer.stderr()  # still serving
    assert buffer.process.poll() is None
    warnings = [line for line in buffer.stderr().splitlines() if "half-written.key" in line]
    assert len(warnings) == 1 and "ignoring an admin key" in warnings[0], buffer.stderr()


def endpoint_with(**curve: Any) -> dict[str, Any]:
    return {"data_endpoint": {"address": "tcp://127.0.0.1:1", "security": "curve", "curve": curve}}


def token_endpoint_with(**token: Any) -> dict[str, Any]:
    return {"data_endpoint": {"address": "tcp://127.0.0.1:1", "security": "token", "token": token}}


CORRUPT_RESPONSES: dict[str, tuple[Any, str]] = {
    "no client public key": (
        endpoint_with(server_public_key=GOOD_KEY, client_secret_key=GOOD_KEY),
        "client_public_key",
    ),
    "curve not a map": ({"data_endpoint": {"address": "x", "security": "curve", "curve": "k"}}, "must be a map"),
    "a key outside Z85": (
        endpoint_with(server_public_key=GOOD_KEY, client_public_key=GOOD_KEY, client_secret_key="~" * 39 + " "),
        "not a Z85 key",
    ),
    "a key that is a number": (
        endpoint_with(server_public_key=GOOD_KEY, client_public_key=7, client_secret_key=GOOD_KEY),
        "40-character",
    ),
    "a token without its user": (token_endpoint_with(address="tcp://127.0.0.1:1", password="p"), "username"),
    "a token that is a list": ({"data_endpoint": {"address": "x", "security": "token", "token": []}}, "token"),
}


@pytest.mark.parametrize("damage", list(CORRUPT_RESPONSES))
def test_a_corrupt_saved_create_response_is_a_config_error(damage: str) -> None:
    response, problem = CORRUPT_RESPONSES[damage]
    with pytest.raises(ConfigError, match=problem) as raised:
        Credentials.from_endpoint(response)
    assert "\n" not in str(raised.value)


def test_a_corrupt_credential_in_the_environment_or_secrets_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_key = json.dumps({"security": "curve", "server_public_key": GOOD_KEY, "public_key": GOOD_KEY,
                          "secret_key": "\"" * 40})  # fmt: skip
    monkeypatch.setenv("PHOTONSTREAM_BUFFER_CREDENTIALS", bad_key)
    with pytest.raises(ConfigError, match="secret_key: not a Z85 key"):
        Credentials.from_env()
    monkeypatch.delenv("PHOTONSTREAM_BUFFER_CREDENTIALS")
    secrets = tmp_path / "secrets.json"
    secrets.write_bytes(b"\xff\xfe\x00 binary")
    monkeypatch.setenv(SECRETS_FILE_ENV, str(secrets))
    with pytest.raises(ConfigError, match="is not text"):
        Credentials.from_env()


@pytest.mark.parametrize("damage", ["binary", "missing", "no client public key", "a key outside Z85"])
def test_consume_with_a_corrupt_credentials_file_is_one_error_line(tmp_path: Path, damage: str) -> None:
    saved = tmp_path / "created.json"
    if damage == "binary":
        saved.write_bytes(b"\xff\xfe\x00\x01")
    elif damage != "missing":
        saved.write_text(json.dumps(CORRUPT_RESPONSES[damage][0]))
    command = [sys.executable, "-m", "photonstream", "consume", f"tcp://127.0.0.1:{free_port()}", STREAM,
               "--credentials", str(saved), "--timeout-s", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Invalid argument" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(saved) in errors[0], done.stderr
