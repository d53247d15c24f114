"""Credentials of a buffer link (producer or consumer side) and the buffer's key files.

A link is ``curve`` (CURVE: the client proves its key pair, the server its own, and every byte is encrypted),
``token`` (PLAIN: a user name and secret checked by the buffer's ZAP handler; the data and the secret itself cross
the network in clear, so only for links inside one facility), or ``none`` (no authentication: the embedded
test/demo mode only). ``Credentials.apply(socket)`` sets a client socket's options before it connects.

The API hands them out as JSON (the create response's ``data_endpoint``; a job's secrets file, see
``photonstream.job_secrets``)::

    {"security": "curve", "server_public_key": "...", "public_key": "...", "secret_key": "..."}
    {"security": "token", "username": "c.<stream>", "password": "..."}

Key files use ZeroMQ's certificate format (``zmq.auth``): ``NAME.key`` (public) and ``NAME.key_secret`` (both
halves, mode 0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import zmq
from zmq.utils.z85 import decode as z85_decode

from photonstream.config.environment import BUFFER_CREDENTIALS_ENV as CREDENTIALS_ENV
from photonstream.errors import ConfigError

Security = Literal["curve", "token", "none"]
SECURITIES: tuple[Security, ...] = ("curve", "token", "none")


def token_hash(password: str) -> str:
    """What the buffer keeps of a token's secret (it compares hashes, never stores the secret)."""
    return hashlib.sha256(password.encode()).hexdigest()


def new_token_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Credentials:
    security: Security = "none"
    server_public_key: str | None = None  # curve: the buffer's public key (Z85)
    public_key: str | None = None  # curve: this client's key pair (Z85)
    secret_key: str | None = None
    username: str | None = None  # token
    password: str | None = None

    def __post_init__(self) -> None:
        if self.security not in SECURITIES:
            raise ConfigError(f"security: {self.security!r} is not one of curve, token, none")
        if self.security == "curve":
            for name in ("server_public_key", "public_key", "secret_key"):
                problem = z85_key_problem(getattr(self, name))
                if problem:
                    raise ConfigError(f"credentials.{name}: {problem}")
        if self.security == "token" and not (
            isinstance(self.username, str) and self.username and isinstance(self.password, str) and self.password
        ):
            raise ConfigError("credentials: a token link needs username and password (strings)")

    @classmethod
    def curve(cls, server_public_key: str, public_key: str, secret_key: str) -> Credentials:
        return cls("curve", server_public_key, public_key, secret_key)

    @classmethod
    def token(cls, username: str, password: str) -> Credentials:
        return cls("token", username=username, password=password)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Credentials:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ConfigError(f"credentials: {exc}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "credentials") -> Credentials:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_env(cls, name: str = CREDENTIALS_ENV) -> Credentials | None:
        """From ``$NAME``, else from entry ``NAME`` of the job's secrets file (where the API's jobs get them)."""
        from photonstream.job_secrets import SECRETS_FILE_ENV, job_secret

        text = job_secret(name)
        where = f"environment variable {name}" if os.environ.get(name) else f"{name} in ${SECRETS_FILE_ENV}"
        return None if not text else cls.from_json(text, where=where)

    @classmethod
    def from_endpoint(cls, endpoint: Any, security: Security | None = None) -> tuple[str, Credentials | None]:
        """(buffer address, credentials) for a consumer, from the API's ``data_endpoint`` (a dict, the model, or a
        whole create response); ``security`` picks the link (default: the endpoint's own)."""
        if hasattr(endpoint, "model_dump"):
            endpoint = endpoint.model_dump(mode="json")
        if isinstance(endpoint, dict) and "data_endpoint" in endpoint:
            endpoint = endpoint["data_endpoint"]
        if not isinstance(endpoint, dict) or "address" not in endpoint:
            raise ConfigError("data_endpoint: not the data endpoint of a stream (no address)")
        chosen = security or endpoint.get("security") or "none"
        if chosen == "none":
            return str(endpoint["address"]), None
        if chosen == "curve":
            curve = _section(endpoint, "curve")
            if not curve.get("server_public_key"):
                raise ConfigError("data_endpoint.curve: this buffer has no CURVE listener (server_public_key unset)")
            if not curve.get("client_secret_key"):
                raise ConfigError(
                    "data_endpoint.curve.client_secret_key: the secret key is shown once, in the create response; "
                    "use the saved response (photonstream request create --save)"
                )
            for name in ("server_public_key", "client_public_key", "client_secret_key"):
                problem = z85_key_problem(curve.get(name))
                if problem:
                    raise ConfigError(f"data_endpoint.curve.{name}: {problem}")
            return str(endpoint["address"]), cls.curve(
                curve["server_public_key"], curve["client_public_key"], curve["client_secret_key"]
            )
        if chosen == "token":
            token = _section(endpoint, "token")
            if not token.get("address"):
                raise ConfigError("data_endpoint.token: this buffer has no token listener")
            if not token.get("password"):
                raise ConfigError(
                    "data_endpoint.token.password: the token is shown once, in the create response; use the saved "
                    "response (photonstream request create --save)"
                )
            if not isinstance(token.get("username"), str) or not isinstance(token["password"], str):
                raise ConfigError("data_endpoint.token: username and password must be strings")
            return str(token["address"]), cls.token(token["username"], token["password"])
        raise ConfigError(f"security: {chosen!r} is not one of curve, token, none")

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @property
    def principal(self) -> str:
        """How the buffer names this client once authenticated (its ZAP User-Id)."""
        if self.security == "curve":
            return f"curve:{self.public_key}"
        if self.security == "token":
            return f"token:{self.username}"
        return "anonymous"

    def apply(self, sock: zmq.Socket) -> None:
        """Set a client socket's security options (call before connect)."""
        if self.security == "curve":
            assert self.server_public_key and self.public_key and self.secret_key
            sock.curve_serverkey = self.server_public_key.encode()
            sock.curve_publickey = self.public_key.encode()
            sock.curve_secretkey = self.secret_key.encode()
        elif self.security == "token":
            assert self.username and self.password
            sock.plain_username = self.username.encode()
            sock.plain_password = self.password.encode()


def _section(endpoint: dict[str, Any], name: str) -> dict[str, Any]:
    section = endpoint.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"data_endpoint.{name}: must be a map, not {type(section).__name__}")
    return section


def z85_key_problem(value: Any) -> str:
    """What is wrong with a CURVE key as given ('' for a 40-character Z85 string); ZeroMQ itself would only say
    'Invalid argument' when the key is set on a socket."""
    if not isinstance(value, str) or len(value) != 40:
        return "a CURVE key is a 40-character Z85 string"
    try:
        z85_decode(value)
    except (KeyError, ValueError):
        return "not a Z85 key (a character outside the Z85 alphabet)"
    return ""


def apply_credentials(sock: zmq.Socket, credentials: Credentials | None) -> None:
    if credentials is not None:
        credentials.apply(sock)


def _monitor_event(monitor: zmq.Socket) -> tuple[int, int]:
    """(event, value) of the next socket-monitor message: its first frame packs a 16-bit event id and a 32-bit
    value. (Parsed here rather than with zmq.utils.monitor, which imports asyncio: ~15 ms of every job's start.)"""
    first = monitor.recv_multipart(zmq.NOBLOCK)[0]
    kind, value = struct.unpack("=Hi", first[:6])
    return kind, value


class HandshakeWatch:
    """Notices that the buffer refused this socket's credentials (ZAP) or its security mechanism.

    ZeroMQ retries a refused handshake silently; without this, a client with a wrong key would simply wait.

    A refusal after this socket was once admitted is not final at once: a restarted buffer (or one whose grants
    the API is still sending) may refuse the first reconnects. Such refusals count only when they go on for
    ``grace_s`` with no admitted handshake between; a credential that was never admitted fails at the first.
    """

    EVENTS = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
    )
    DROPPED_LIMIT = 3  # handshakes cut off in a row (no success between) before we call it a mismatch
    GRACE_S = 30.0  # refusals after an admission: how long they may go on before they are final

    def __init__(self, sock: zmq.Socket, endpoint: str, grace_s: float = GRACE_S) -> None:
        self.endpoint = endpoint
        self.refused = ""
        self.succeeded = False
        self.grace_s = grace_s
        self._dropped = 0
        self._refused_since: float | None = None  # first refusal after an admission, while none succeeded again
        self._monitor: zmq.Socket | None = sock.get_monitor_socket(self.EVENTS)
        self._sock = sock

    def check(self) -> str:
        """The refusal reason ('' while none was seen)."""
        monitor = self._monitor
        while monitor is not None and not self.refused:
            try:
                if not monitor.poll(0):
                    break
                kind, value = _monitor_event(monitor)
            except zmq.ZMQError:
                break
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded = True
                self._dropped = 0
                self._refused_since = None
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # The peer closed mid-handshake: a mechanism it does not serve, or (once a handshake has succeeded
                # on this socket, so the mechanism is right) a link that was cut; only the first is a refusal.
                self._dropped += 0 if self.succeeded else 1
                if self._dropped >= self.DROPPED_LIMIT:
                    self.refused = (
                        f"buffer {self.endpoint} refused the connection's security handshake {self._dropped} times: "
                        "the link's security (curve, token or none) is not the one this endpoint serves"
                    )
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.succeeded:
                if self._refused_since is None:
                    self._refused_since = time.monotonic()
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused = (
                    f"buffer {self.endpoint} refused the credentials (ZAP status {value}): "
                    "no credential, or one not issued for this buffer"
                )
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self.refused = (
                    f"buffer {self.endpoint} refused the connection's security handshake: the link's security "
                    "(curve, token or none) is not the one this endpoint serves"
                )
        since = self._refused_since
        if not self.refused and since is not None and time.monotonic() - since >= self.grace_s:
            self.refused = (
                f"buffer {self.endpoint} admitted these credentials before, but has refused them since it was "
                f"reconnected, for {self.grace_s:g} s: the grant was withdrawn (stream finished or revoked)"
            )
        return self.refused

    def close(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None


# --- key files ---------------------------------------------------------------------------------------------------


def load_keypair(secret_file: Path) -> tuple[str, str]:
    """(public, secret) Z85 keys from a ``NAME.key_secret`` file."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{secret_file}: cannot read the CURVE key pair ({exc})") from None
    if secret is None:
        raise ConfigError(f"{secret_file}: holds no secret key")
    return _key_from_file(public, secret_file, "public"), _key_from_file(secret, secret_file, "secret")


def _key_from_file(value: bytes, path: Path, half: str) -> str:
    text = value.decode(errors="replace")
    problem = z85_key_problem(text)
    if problem:
        raise ConfigError(f"{path}: the {half} key is corrupt ({problem})")
    return text


def load_public_key(public_file: Path) -> str:
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(str(public_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{public_file}: cannot read the CURVE public key ({exc})") from None
    return _key_from_file(public, public_file, "public")


def ensure_keypair(directory: Path, name: str) -> tuple[str, str]:
    """Load ``directory/NAME.key_secret``, creating the pair (secret file mode 0600) if it does not exist yet."""
    import zmq.auth

    secret_file = directory / f"{name}.key_secret"
    if not secret_file.exists():
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        _, secret_path = zmq.auth.create_certificates(str(directory), name)
        os.chmod(secret_path, 0o600)
    return load_keypair(secret_file)


def public_keys_in(directory: Path) -> set[str]:
    """Every public key of the ``*.key`` files in a directory (empty if it does not exist); a ConfigError naming
    the first file that is not a key, or a path there that is not a directory."""
    keys, problems = readable_public_keys(directory)
    if problems:
        raise ConfigError(problems[0])
    return keys


def readable_public_keys(directory: Path) -> tuple[set[str], list[str]]:
    """(the public keys of the ``*.key`` files in ``directory`` that read, what is wrong with the others)."""
    if not directory.exists():
        return set(), []
    if not directory.is_dir():
        return set(), [f"{directory}: not a directory (of *.key public key files)"]
    keys: set[str] = set()
    problems: list[str] = []
    try:
        paths = sorted(directory.glob("*.key"))
    except OSError as exc:
        return set(), [f"{directory}: cannot list the key files ({exc.strerror})"]
    for path in paths:
        try:
            keys.add(load_public_key(path))
        except ConfigError as exc:
            problems.append(str(exc))
    return keys, problems
