"""The API's side of the buffer: the embedded buffer (or the endpoint of an external one), its grants, results, stats.

Security of the data plane (see ``photonstream.buffer.access``):
- the buffer's main listener is a CURVE server with its own key pair (``buffer.key_secret`` in the keys directory,
  default ``<state_dir>/buffer-keys``); an optional token listener takes ZAP PLAIN (authenticated, plaintext);
- each stream gets a consumer key pair and token (create response, shown once) and, at launch, a producer key pair
  and token (the job's environment); the database keeps public keys and token hashes only;
- the API tells the buffer which principal may read or write which stream address. Embedded: by a direct call into
  the service's access table (same process). External: over an authenticated control command (``ACL``) sent with
  the API's own CURVE key (``api.key_secret``; the buffer trusts the public halves in ``<keys dir>/admins``). A
  stream is registered when created (embedded) and when launched, and every ``buffer_sync_s`` the full list is
  re-sent (``sync``: a restarted buffer gets its grants back; a stream finished more than ``buffer_grant_keep_s``
  ago loses them);
- ``buffer_security: none`` (embedded only, for tests and demos) runs the buffer without authentication.

The embedded buffer runs as a supervised child process by default (``buffer_isolation: process``; why:
``photonstream.api.buffer_process``) and is then driven like an external one, over the control commands;
``buffer_isolation: thread`` keeps it in the API's process (direct calls: for tests that look inside it).

Results: consumers send them to the buffer (``RES``); this link collects them (``RESULTS``, or a direct call) every
``results_poll_s`` and stores them once per (buffer instance, id).

Ends: when the launcher records a stream failed or cancelled, ``end_streams`` ends its addresses in the buffer
(direct call, or ``FIN`` with the admin key), so consumers get an end message with that reason instead of waiting.
The ends are kept in the store (``stream_buffer_ends``): ``sync`` tells a buffer instance it has not told yet (a
restarted buffer, which forgot the ends of streams that were not durable) every end of the last
``buffer_grant_keep_s`` again, after their grants, so a consumer that subscribes there gets the END too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import zmq

from photonstream.api.settings import ApiSettings
from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import Credentials, Security, ensure_keypair, load_public_key
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.frames import Message
from photonstream.store.ends import BufferEndStore
from photonstream.store.models import Stream, StreamSecret, utcnow
from photonstream.store.reports import ReportStore, Revoked

log = logging.getLogger("photonstream.api.buffer")

INSECURE_BUFFER_WARNING = (
    "BUFFER WITHOUT AUTHENTICATION (buffer_security: none): anyone who reaches the buffer's port reads and writes "
    "every stream. Use this only for tests and demos on a trusted machine."
)


class BufferUnavailableError(PhotonstreamError):
    """The buffer did not answer a control command. (503)"""

    http_status = 503


def stream_id_of(address: str) -> str | None:
    """The API stream id of a buffer address ``experiment/run/<stream id hex>`` (None if it is not one)."""
    try:
        return str(uuid.UUID(hex=address.rsplit("/", 1)[-1]))
    except ValueError:
        return None


def access_entry(stream: Stream, secret: StreamSecret) -> dict[str, Any]:
    """The buffer grant of one stream: its addresses, who reads them, who writes them, and the token hashes."""
    consumers = [f"curve:{stream.consumer_public_key}", f"token:{secret.consumer_token_user}"]
    tokens = {secret.consumer_token_user: secret.consumer_token_hash}
    producers = []
    if secret.producer_public_key:
        producers.append(f"curve:{secret.producer_public_key}")
    if secret.producer_token_user and secret.producer_token_hash:
        producers.append(f"token:{secret.producer_token_user}")
        tokens[secret.producer_token_user] = secret.producer_token_hash
    if secret.worker_public_key:  # the elastic pools' workers (photonstream.api.pools)
        consumers.append(f"curve:{secret.worker_public_key}")
    if secret.worker_token_user and secret.worker_token_hash:
        consumers.append(f"token:{secret.worker_token_user}")
        tokens[secret.worker_token_user] = secret.worker_token_hash
    return {
        "addresses": list(stream.data_endpoint.get("streams", [])),
        "consumers": consumers,
        "producers": producers,
        "tokens": tokens,
    }


class ControlClient:
    """Request/reply with an external buffer over a DEALER socket authenticated with the API's admin key."""

    def __init__(self, endpoint: str, credentials: Credentials | None, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._socket: zmq.Socket | None = None

    def _open(self) -> zmq.Socket:
        if self._socket is None:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self.credentials is not None:
                self.credentials.apply(sock)
            sock.connect(self.endpoint)
            self._socket = sock
        return self._socket

    def request(
        self, command: bytes, header: dict[str, Any] | None, *frames: bytes
    ) -> tuple[dict[str, Any], list[bytes]]:
        with self._lock:
            sock = self._open()
            sock.send_multipart([P.envelope(command, header), *frames])
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                if not sock.poll(100):
                    continue
                parts = sock.recv_multipart()
                reply_command, reply = P.open_envelope(parts[0])
                if reply_command == P.ERR:
                    raise BufferUnavailableError(f"buffer {self.endpoint}: {reply.get('m', 'refused')}")
                if reply_command == command:
                    return reply, parts[1:]
            self.close_socket()  # a late answer must not be taken for the next request's
            raise BufferUnavailableError(f"buffer {self.endpoint}: no answer within {self.timeout_s:g} s")

    def close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None


class BufferLink:
    def __init__(self, settings: ApiSettings, reports: ReportStore) -> None:
        self.settings = settings
        self.reports = reports
        self.ends = BufferEndStore(reports.db)
        self._ends_told = ""  # the buffer instance last told every recent end (sync)
        # credentials revoked outside the database (the CA's CRL, ``photonstream ca revoke``): set by the app
        self.revoked_elsewhere: Callable[[], Revoked] = frozenset
        self.service: Any = None  # the embedded BufferService once started (buffer_isolation: thread)
        self.child: Any = None  # the embedded buffer's process once started (buffer_isolation: process)
        self.keys_dir = settings.resolved_buffer_keys_dir
        self.embedded = settings.buffer == "embedded"
        self.in_process = self.embedded and settings.buffer_isolation == "thread"
        self.admin: Credentials | None = None
        self.server_public_key = settings.buffer_public_key
        self._admin_pair: tuple[str, str] | None = None
        self.security: Security = self._resolve_security()
        self._control: ControlClient | None = None
        # one grant change at a time, read and sent together: a sync that read the database before a revocation
        # and sent after the revocation's own sync would grant the revoked stream again until the next one
        self._grants_lock = threading.Lock()
        # the embedded buffer's endpoints as its first start bound them (a port '*' resolved): a later start (the
        # app's lifespan entered again) binds the same ones, so streams created before find it again
        self._bound: dict[str, Any] = {}
        self._endpoint_resolved_here = settings.buffer == "embedded" and (
            "buffer_endpoint" not in settings.model_fields_set or settings.buffer_endpoint == settings.buffer_bind
        )
        self._token_endpoint_resolved_here = settings.buffer_token_endpoint is None
        self._instance = ""
        self._results_after = 0
        self._next_sync = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""

    # -- setup ---------------------------------------------------------------------------------------------------
    def _resolve_security(self) -> Security:
        s = self.settings
        if self.embedded:
            if s.buffer_security == "none":
                return "none"
            self.server_public_key, _ = ensure_keypair(self.keys_dir, "buffer")
        elif self.server_public_key is None and (self.keys_dir / "buffer.key").exists():
            self.server_public_key = load_public_key(self.keys_dir / "buffer.key")
        if self.server_public_key is None:
            if s.buffer_security in ("curve", "token"):
                raise ConfigError(
                    f"buffer_security: {s.buffer_security} needs the buffer's public key (buffer_public_key, or "
                    f"buffer.key in {self.keys_dir})"
                )
            log.warning(
                "external buffer %s without a known CURVE key: streams are not authenticated", s.buffer_endpoint
            )
            return "none"
        public, secret = ensure_keypair(self.keys_dir, "api")
        admins = self.keys_dir / "admins"
        if not (admins / "api.key").exists():
            admins.mkdir(parents=True, exist_ok=True)
            (admins / "api.key").write_text((self.keys_dir / "api.key").read_text())
        self._admin_pair = (public, secret)
        self.admin = Credentials.curve(self.server_public_key, public, secret)
        security = s.buffer_security or "curve"
        if security == "token" and not (s.buffer_token_endpoint or (self.embedded and s.buffer_token_bind)):
            raise ConfigError("buffer_security: token needs buffer_token_endpoint (the buffer's token listener)")
        return security

    @property
    def token_endpoint(self) -> str | None:
        if self.settings.buffer_token_endpoint:
            return self.settings.buffer_token_endpoint
        if self.service is not None:
            return self.service.token_endpoint  # type: ignore[no-any-return]
        return None

    @property
    def _not_started(self) -> bool:
        return self.embedded and self.service is None and self.child is None

    def start(self) -> None:
        """Start the embedded buffer (if this API embeds one) and the sync/collect thread."""
        if self._not_started:
            self._start_embedded()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="photonstream-buffer-link", daemon=True)
            self._thread.start()

    def _start_embedded(self) -> None:
        from photonstream.buffer.service import BufferService, BufferSettings

        s = self.settings
        secured = self.security != "none"
        values: dict[str, Any] = {
            "bind": s.buffer_bind,
            "security": "curve" if secured else "none",
            "token_bind": s.buffer_token_bind if secured else None,
            "keys_dir": self.keys_dir if secured else None,
            "admin_keys": (self._admin_pair[0],) if self._admin_pair else (),
            "data_dir": s.buffer_data_dir or s.state_dir / "buffer",
            **s.buffer_options,
            **self._bound,
        }
        if not secured:
            log.warning(INSECURE_BUFFER_WARNING)
        checked = BufferSettings.build(**values)  # a bad buffer option fails here, in one line, not in the child
        if self.in_process:
            service = BufferService(checked)
            endpoint, token_endpoint = service.start(), service.token_endpoint
            self.service = service
        else:
            from photonstream.api.buffer_process import BufferProcess

            child = BufferProcess(checked.model_dump(mode="json"))
            ready = child.start()
            endpoint, token_endpoint = ready["endpoint"], ready.get("token_endpoint")
            self.child = child
        self._bound = {"bind": endpoint, **({"token_bind": token_endpoint} if token_endpoint else {})}
        if self._endpoint_resolved_here:
            s.buffer_endpoint = endpoint  # the bound address (a port '*' resolved)
        if secured and self._token_endpoint_resolved_here:
            s.buffer_token_endpoint = token_endpoint
        s.buffer_public_key = self.server_public_key if secured else None
        log.info("embedded buffer on %s (security %s)", endpoint, self.security)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._control is not None:
            self._control.close_socket()
            self._control = None
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.child is not None:
            self.child.stop()
            self.child = None

    # -- the data endpoint and the job's side ----------------------------------------------------------------------
    def data_endpoint(
        self, addresses: list[str], public_key: str, token_user: str, groups: list[Any]
    ) -> dict[str, Any]:
        token_endpoint = self.token_endpoint if self.security != "none" else None
        return {
            "address": self.settings.consumer_buffer_endpoint,
            "security": "none" if self.security == "none" else "curve",
            "streams": addresses,
            "consumer_groups": groups,
            "curve": {
                "server_public_key": self.server_public_key if self.security != "none" else None,
                "client_public_key": public_key,
            },
            "token": {"address": token_endpoint, "username": token_user} if token_endpoint else None,
        }

    def producer_link(self) -> tuple[str, Security]:
        """(address, security) the jobs' buffer handlers use."""
        if self.security == "token":
            endpoint = self.token_endpoint
            if endpoint is None:
                raise ConfigError("buffer_security: token, but the buffer has no token listener")
            return endpoint, "token"
        return self.settings.buffer_endpoint, self.security

    # -- grants -------------------------------------------------------------------------------------------------------
    def _apply(self, op: str, body: Any) -> str:
        """Send grants; returns the buffer's instance id ('' where unknown)."""
        if self._not_started:
            return ""  # not started (the app's lifespan starts it); the first sync registers everything
        if self.security == "none" and self.child is None:
            return str(self.service.instance) if self.in_process else ""
        if self.service is not None:
            access = self.service.access
            if op == "register":
                access.register(body)
            else:
                access.sync(body)
            return str(self.service.instance)
        reply, _ = self.control.request(P.ACL, {"op": op}, msgpack.packb(body, use_bin_type=True))
        if reply.get("i") != self._instance and op == "register":
            self._next_sync = 0.0  # a buffer we have not synced yet (restarted): send it everything soon
        return str(reply.get("i") or "")

    @property
    def control(self) -> ControlClient:
        if self._control is None:
            self._control = ControlClient(self.settings.buffer_endpoint, self.admin)
        return self._control

    def register(self, stream_id: str) -> None:
        """Grant a stream's credentials in the buffer now (raises BufferUnavailableError when it does not answer)."""
        with self._grants_lock:
            row = self.reports.access_row(stream_id, self.revoked_elsewhere())
            if row is not None:
                self._apply("register", [access_entry(*row)])

    def sync(self) -> None:
        """Re-send every grant; to a buffer instance not told yet (restarted), also every end of the last
        ``buffer_grant_keep_s``, so that consumers subscribing there get them."""
        keep = dt.timedelta(seconds=self.settings.buffer_grant_keep_s)
        with self._grants_lock:
            rows = self.reports.access_rows(utcnow() - keep, self.revoked_elsewhere())
            entries = [access_entry(stream, secret) for stream, secret in rows]
            instance = self._apply("sync", entries)
        if self._not_started:
            return
        if instance and instance == self._ends_told:
            return
        for end in self.ends.since(utcnow() - keep):
            self.end_streams(list(end.addresses), end.state, end.reason)
            if end.delivered_at is None:
                self.ends.mark_delivered(end.stream_id)
        self._ends_told = instance

    def end_streams(self, addresses: list[str], reason: str, message: str) -> int:
        """End streams whose job or producer died (``reason`` failed | cancelled, ``message`` one line): their
        consumers get what is stored, then the end. Embedded: a direct call; external: ``FIN`` with the admin key.
        Returns how many ended now; raises BufferUnavailableError when the buffer does not answer."""
        if not addresses:
            return 0
        if self._not_started:
            return 0
        if self.service is not None:
            return int(self.service.end_streams(addresses, reason, message))
        reply, _ = self.control.request(P.FIN, {"s": addresses, "r": reason, "m": message})
        return int(reply.get("n", 0))

    # -- results and stats ----------------------------------------------------------------------------------------
    def collect_results(self) -> int:
        """Fetch new results from the buffer and store them; returns how many were new."""
        from photonstream.client.results import decode_result

        instance, items = self._fetch_results()
        decoded = []
        for item in items:
            self._results_after = max(self._results_after, int(item["id"]))
            try:
                decoded.append(decode_result(item))
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                log.warning("result %s from %s dropped: %s", item.get("id"), item.get("by"), exc)
        stream_of = {d["address"]: sid for d in decoded if (sid := stream_id_of(d["address"])) is not None}
        return self.reports.add_results(stream_of, instance, decoded) if decoded else 0

    def _fetch_results(self) -> tuple[str, list[dict[str, Any]]]:
        if self._not_started:
            return "", []
        if self.service is not None:
            self._switch_instance(self.service.instance)
            return self.service.instance, self.service.results_after(self._results_after, 1000)
        if self.security == "none" and self.child is None:
            return "", []  # results need an authenticated link (the buffer names who published them)
        reply, frames = self.control.request(P.RESULTS, {"after": self._results_after, "limit": 1000})
        instance = str(reply.get("i", ""))
        if instance != self._instance:
            self._switch_instance(instance)
            reply, frames = self.control.request(P.RESULTS, {"after": self._results_after, "limit": 1000})
        return instance, msgpack.unpackb(frames[0], raw=False) if frames else []

    def _switch_instance(self, instance: str) -> None:
        """A buffer (re)started: collect from what the database already has of it on, and re-send the grants."""
        if instance != self._instance:
            self._instance = instance
            self._results_after = self.reports.last_buffer_id(instance)
            self._next_sync = 0.0

    def stats(self) -> dict[str, Any]:
        """The buffer's state (every stream): a second old at most for the embedded buffer."""
        if self._not_started:
            return {"streams": {}}
        if self.service is not None:
            return self.service.stats()  # type: ignore[no-any-return]
        if self.child is not None:
            import json

            _, frames = self.control.request(P.STATS, None)
            return json.loads(frames[0]) if frames else {"streams": {}}
        from photonstream.buffer.cli import fetch_stats

        return fetch_stats(self.settings.buffer_endpoint, 2.0, credentials=self.admin)

    def data_flowing(self, addresses: list[str]) -> bool:
        """Whether the buffer holds data messages of any of these addresses (a lost 'streaming' report's stand-in)."""
        try:
            streams = self.stats().get("streams", {})
        except (PhotonstreamError, zmq.ZMQError, ValueError):
            return False
        return any(streams.get(a, {}).get("head", 0) > 0 for a in addresses)

    def subscriber(self) -> Any:
        """For the dashboard's monitor: (address, context) → messages of that stream (admin credential)."""

        def open_subscription(address: str, context: zmq.Context) -> Iterator[Message]:
            from photonstream.client import subscribe

            return subscribe(self.settings.buffer_endpoint, address, group="_monitor", policy="latest",
                             start="beginning", credit=1, context=context, credentials=self.admin)  # fmt: skip

        return open_subscription

    # -- the background loop ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        interval = min(self.settings.results_poll_s, self.settings.buffer_sync_s)
        while not self._stop.is_set():
            try:
                self.collect_results()
                if time.monotonic() >= self._next_sync:
                    self.sync()
                    self._next_sync = time.monotonic() + self.settings.buffer_sync_s
                self.last_error = ""
            except (PhotonstreamError, zmq.ZMQError) as exc:
                if str(exc) != self.last_error:
                    log.warning("buffer link: %s", exc)
                self.last_error = str(exc)
            except Exception:
                log.exception("buffer link")
            self._stop.wait(interval)
