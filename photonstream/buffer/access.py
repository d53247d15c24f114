"""Who may do what in the buffer: authentication (a ZAP handler) and per-stream authorization.

Authentication happens once per connection, in the ZeroMQ handshake. The service binds the ZAP endpoint
(``inproc://zeromq.zap.01``) of its context before any listener, and answers requests in its own loop:

- ``curve`` listeners: the client's public key must be one the table knows (a stream's consumer or producer key,
  or an admin key); the connection's User-Id becomes ``curve:<Z85 key>``;
- ``token`` listeners (PLAIN): the user name must be known and the SHA-256 of the presented secret must match;
  User-Id ``token:<user>``. PLAIN sends the secret in clear: for links inside one facility only;
- ``none`` listeners do not authenticate (User-Id ``anonymous``, allowed everything): embedded test/demo mode.

Authorization happens on every message: the service reads the User-Id of the frame (ZeroMQ keeps it on every
message of an authenticated connection) and checks it against the stream's grant: ``consume`` (SUB, results) for
consumer principals, ``produce`` (PUB) for producer principals; admins (the API's own key) may do anything,
including the control commands that change this table (``ACL``) and read results and stats of every stream.

The table is replaced copy-on-write: readers (the I/O loop) take the current snapshot without a lock, so an
embedding process (the API) may update it from another thread.

Grants outlive the process: with a ``state_file`` (``access.json`` in the buffer's data directory, beside the
durable streams) every change is written there (atomically, mode 0600: public keys and token hashes only), and a
restarted buffer loads it before it binds any listener. Producers and consumers of a durable stream reconnect to
a buffer that already knows them, instead of being refused until the API's next sync.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmq.utils.z85 import encode as z85_encode

from photonstream.buffer.credentials import public_keys_in, readable_public_keys
from photonstream.errors import ConfigError

ANONYMOUS = "anonymous"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ROLES = ("consume", "produce")
ACCESS_FILE = "access.json"

log = logging.getLogger("photonstream.buffer")


@dataclass(frozen=True)
class StreamGrant:
    consumers: frozenset[str] = frozenset()
    producers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Snapshot:
    grants: dict[str, StreamGrant] = field(default_factory=dict)  # stream address → grant
    tokens: dict[str, str] = field(default_factory=dict)  # token user → sha256 of its secret
    curve_keys: frozenset[str] = frozenset()  # every Z85 key some grant names
    admins: frozenset[str] = frozenset()  # admin principals


def parse_entries(entries: Any) -> list[dict[str, Any]]:
    """Check ACL entries (``{addresses, consumers, producers, tokens}``) as they come from the API."""
    if not isinstance(entries, list):
        raise ConfigError("acl: entries must be a list")
    checked = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"acl: entries[{i}] must be a map")
        addresses = entry.get("addresses", [])
        principals = {role: entry.get(role, []) for role in ("consumers", "producers")}
        tokens = entry.get("tokens", {})
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ConfigError(f"acl: entries[{i}].addresses must be a list of stream addresses")
        for role, names in principals.items():
            if not isinstance(names, list) or not all(
                isinstance(n, str) and n.split(":", 1)[0] in ("curve", "token") for n in names
            ):
                raise ConfigError(f"acl: entries[{i}].{role} must be a list of 'curve:KEY' or 'token:USER'")
        if not isinstance(tokens, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in tokens.items()
        ):
            raise ConfigError(f"acl: entries[{i}].tokens must map user names to SHA-256 hex digests")
        checked.append({"addresses": addresses, **principals, "tokens": tokens})
    return checked


class AccessTable:
    """Grants per stream, token hashes and admin keys; see the module docstring."""

    def __init__(
        self, admin_keys: set[str] | None = None, admin_dir: Path | None = None, state_file: Path | None = None
    ) -> None:
        self._static_admins = frozenset(f"curve:{k}" for k in admin_keys or ())
        self.admin_dir = admin_dir
        self.state_file = state_file
        self._entries: dict[str, dict[str, Any]] = {}  # one per address
        self._saved: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # writers only
        self._admins_read_at = 0.0
        self._admin_problems: list[str] = []  # what the last reading of admin_dir could not read
        self.snapshot = Snapshot(admins=self._static_admins | self._dir_admins())
        self.refused = 0  # handshakes refused
        self.save_error = ""

    def load(self) -> int:
        """Take the grants kept in ``state_file`` (a restart); returns how many addresses. An unreadable file is
        reported and ignored: the API's next sync sends them again."""
        if self.state_file is None or not self.state_file.exists():
            return 0
        try:
            entries = json.loads(self.state_file.read_text())["entries"]
            with self._lock:
                self._entries = {address: entry for entry in parse_entries(entries) for address in entry["addresses"]}
                self._saved = dict(self._entries)
                self._publish(save=False)
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
            log.warning("buffer: ignoring the kept grants in %s (%s); waiting for the API's sync", self.state_file, exc)
            return 0
        return len(self._entries)

    def _save(self) -> None:
        if self.state_file is None or self._entries == self._saved:
            return
        unique = {id(entry): entry for entry in self._entries.values()}
        temporary = self.state_file.with_name(f".{self.state_file.name}.tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                json.dump({"entries": list(unique.values())}, out)
            os.replace(temporary, self.state_file)
            self._saved = dict(self._entries)
            self.save_error = ""
        except OSError as exc:  # the grants still hold in memory; a restart then waits for the API's sync
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not self.save_error:
                log.warning("buffer: cannot keep grants in %s (%s)", self.state_file, exc.strerror)
            self.save_error = str(exc.strerror)

    def _dir_admins(self) -> frozenset[str]:
        """At start: every key, or a ConfigError naming the file that is not one (the buffer does not start)."""
        if self.admin_dir is None:
            return frozenset()
        return frozenset(f"curve:{k}" for k in public_keys_in(self.admin_dir))

    def _readable_dir_admins(self) -> frozenset[str]:
        """While serving: the keys that read; a file that does not (being written, corrupt) admits nobody and is
        logged once, and the loop goes on (an exception here would end the service)."""
        assert self.admin_dir is not None
        keys, problems = readable_public_keys(self.admin_dir)
        if problems != self._admin_problems:
            for problem in set(problems) - set(self._admin_problems):
                log.warning("buffer: ignoring an admin key: %s", problem)
            self._admin_problems = problems
        return frozenset(f"curve:{k}" for k in keys)

    # -- changes ---------------------------------------------------------------------------------------------
    def register(self, entries: list[dict[str, Any]]) -> None:
        """Add or replace the grants of the entries' addresses."""
        with self._lock:
            for entry in parse_entries(entries):
                for address in entry["addresses"]:
                    self._entries[address] = entry
            self._publish()

    def sync(self, entries: list[dict[str, Any]]) -> None:
        """Replace every grant by these (the API's full view: streams it no longer lists lose their grants)."""
        with self._lock:
            self._entries = {}
            for entry in parse_entries(entries):
                for address in entry["addresses"]:
                    self._entries[address] = entry
            self._publish()

    def drop(self, addresses: list[str]) -> None:
        with self._lock:
            for address in addresses:
                self._entries.pop(address, None)
            self._publish()

    def _publish(self, save: bool = True) -> None:
        if save:
            self._save()
        grants: dict[str, StreamGrant] = {}
        tokens: dict[str, str] = {}
        keys: set[str] = set()
        for address, entry in self._entries.items():
            grants[address] = StreamGrant(frozenset(entry["consumers"]), frozenset(entry["producers"]))
            tokens.update(entry["tokens"])
            for name in (*entry["consumers"], *entry["producers"]):
                if name.startswith("curve:"):
                    keys.add(name.removeprefix("curve:"))
        self.snapshot = Snapshot(grants, tokens, frozenset(keys), self.snapshot.admins)

    def reload_admins(self, min_interval_s: float = 1.0) -> bool:
        """Re-read the admin key directory (at most once per ``min_interval_s``); True if it changed."""
        now = time.monotonic()
        if self.admin_dir is None or now - self._admins_read_at < min_interval_s:
            return False
        self._admins_read_at = now
        admins = self._static_admins | self._readable_dir_admins()
        if admins == self.snapshot.admins:
            return False
        with self._lock:
            current = self.snapshot
            self.snapshot = Snapshot(current.grants, current.tokens, current.curve_keys, admins)
        return True

    # -- decisions -------------------------------------------------------------------------------------------
    def authenticate(self, mechanism: bytes, credentials: list[bytes]) -> tuple[str | None, str]:
        """(principal, '') for a known client, (None, reason) otherwise."""
        snap = self.snapshot
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85_encode(credentials[0]).decode()
            principal = f"curve:{key}"
            if key in snap.curve_keys or principal in snap.admins:
                return principal, ""
            if self.reload_admins() and principal in self.snapshot.admins:
                return principal, ""
            return None, "unknown client key"
        if mechanism == b"PLAIN" and len(credentials) == 2:
            user = credentials[0].decode(errors="replace")
            expected = snap.tokens.get(user)
            presented = hashlib.sha256(credentials[1]).hexdigest()
            if expected is not None and hmac.compare_digest(expected, presented):
                return f"token:{user}", ""
            return None, "unknown token"
        return None, f"mechanism {mechanism.decode(errors='replace')} is not accepted"

    def is_admin(self, principal: str) -> bool:
        return principal == ANONYMOUS or principal in self.snapshot.admins

    def may(self, principal: str, address: str, role: str) -> bool:
        if self.is_admin(principal):
            return True
        grant = self.snapshot.grants.get(address)
        if grant is None:
            return False
        return principal in (grant.consumers if role == "consume" else grant.producers)

    def visible(self, principal: str, address: str) -> bool:
        """Whether stats of ``address`` may be shown to ``principal`` (any role on it)."""
        return self.may(principal, address, "consume") or self.may(principal, address, "produce")

    def addresses(self) -> list[str]:
        return sorted(self.snapshot.grants)


def zap_reply(request: list[bytes], table: AccessTable) -> list[bytes]:
    """The reply to one ZAP request received on a ROUTER socket: [routing id, b'', version, request id, ...]."""
    if len(request) < 8:
        return []
    routing, _empty, version, request_id, _domain, _address, _identity, mechanism = request[:8]
    if version != b"1.0":
        return [routing, b"", b"1.0", request_id, b"500", b"unsupported ZAP version", b"", b""]
    principal, reason = table.authenticate(mechanism, request[8:])
    if principal is None:
        table.refused += 1
        return [routing, b"", b"1.0", request_id, b"400", reason.encode(), b"", b""]
    return [routing, b"", b"1.0", request_id, b"200", b"OK", principal.encode(), b""]
