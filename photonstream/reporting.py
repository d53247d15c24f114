"""Progress reports from a running pipeline to the API that launched it (HMAC-signed HTTP callbacks).

The API starts a stream's job with ``PHOTONSTREAM_REPORT_URL`` (``.../v1/internal/streams/<id>/report``) and a
per-stream secret ``PHOTONSTREAM_REPORT_SECRET`` (in the job's secrets file, ``photonstream.job_secrets``; the
environment variable is taken too) (and optionally ``PHOTONSTREAM_REPORT_CA``, the
CA file that verifies the API's certificate; ``PHOTONSTREAM_REPORT_CERT``/``_KEY`` where the API requires a client
certificate). ``reporter_from_env()`` gives the pipeline's progress callback, or None outside such a job::

    end = runner.run(progress=reporter_from_env())

What a report says (JSON, one object): the stream address, ``phase`` (``starting``; ``streaming`` once the buffer
has acked the first data message, i.e. data is flowing; ``ended`` once the buffer has stored the end message),
counters (events read and sent, messages and bytes sent and acked), rates, and the end (reason, error, counts).
The buffer handler feeds what the buffer acked through ``flow`` (a process-wide hub); a run without a buffer
handler counts as streaming once it has sent an event.

Reports go out from a background thread (at most one per ``interval_s``, at once on a phase change) and the last
one is flushed when the process exits. Signing: ``X-Photonstream-Timestamp: <unix s>`` and
``X-Photonstream-Signature: v1=<hex HMAC-SHA256 of "v1\\n<timestamp>\\nPOST\\n<path>\\n" + body>``; the body
carries ``seq``, increasing across the job's processes (time-based), so the API refuses replays.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from photonstream.config.environment import REPORT_CA_ENV as CA_ENV
from photonstream.config.environment import REPORT_CERT_ENV as CERT_ENV
from photonstream.config.environment import REPORT_INTERVAL_ENV as INTERVAL_ENV
from photonstream.config.environment import REPORT_KEY_ENV as KEY_ENV
from photonstream.config.environment import REPORT_SECRET_ENV as SECRET_ENV
from photonstream.config.environment import REPORT_URL_ENV as URL_ENV
from photonstream.config.environment import STREAM_ID_ENV as STREAM_ID_ENV  # the API sets it in every job

if TYPE_CHECKING:
    from photonstream.frames import EndMessage
    from photonstream.pipeline import RunStats

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Photonstream-Timestamp"
SIGNATURE_HEADER = "X-Photonstream-Signature"
SIGNATURE_VERSION = "v1"


def signature(secret: str, timestamp: str, path: str, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 over the version, timestamp, method, path and body."""
    message = f"{SIGNATURE_VERSION}\n{timestamp}\nPOST\n{path}\n".encode() + body
    return f"{SIGNATURE_VERSION}=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = f"{time.time() if now is None else now:.3f}"
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, path, body),
    }


class FlowListener(Protocol):
    def on_acked(self, address: str, messages: int, nbytes: int, data_messages: int) -> None: ...

    def on_ended(self, address: str, end: EndMessage) -> None: ...


class FlowHub:
    """What the buffer has stored of this process's streams; producers (the buffer handler) tell, reporters hear."""

    def __init__(self) -> None:
        self._listeners: list[FlowListener] = []
        self.producers = 0  # buffer handlers open in this process: while any is, only acks mean "streaming"

    def producer_opened(self) -> None:
        self.producers += 1

    def producer_closed(self) -> None:
        self.producers = max(0, self.producers - 1)

    def subscribe(self, listener: FlowListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: FlowListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def acked(self, address: str, messages: int, nbytes: int, data_messages: int) -> None:
        for listener in self._listeners:
            listener.on_acked(address, messages, nbytes, data_messages)

    def ended(self, address: str, end: EndMessage) -> None:
        for listener in self._listeners:
            listener.on_ended(address, end)


flow = FlowHub()

Sender = Callable[[bytes, dict[str, str]], None]


def http_sender(url: str, ca_file: str | None, cert: str | None, key: str | None, timeout_s: float) -> Sender:
    # imported here: every pipeline run imports this module, only a job the API launched sends reports
    import ssl
    import urllib.request

    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=ca_file)
        if cert:
            context.load_cert_chain(cert, key)

    def send(body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            response.read()

    return send


class Reporter:
    """The pipeline's progress callback that reports to the API (see the module docstring)."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        sender: Sender | None = None,
        ca_file: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        hub: FlowHub | None = None,
    ) -> None:
        self.url = url
        self.hub = hub or flow
        self.path = urlsplit(url).path
        self.secret = secret
        self.interval_s = interval_s
        self._send = sender or http_sender(url, ca_file, cert, key, timeout_s)
        self._lock = threading.Lock()
        self._report: dict[str, Any] = {
            "address": "",
            "phase": "starting",
            "events_read": 0,
            "events_sent": 0,
            "messages_sent": 0,
            "bytes_sent": 0,
            "messages_acked": 0,
            "bytes_acked": 0,
            "data_acked": 0,
            "expected_events": None,
            "elapsed_s": 0.0,
            "events_per_s": 0.0,
            "mb_per_s": 0.0,
            "end": None,
        }
        self._dirty = False
        self._sent_phase = ""
        self._seq = 0
        self.sent = 0
        self.failures = 0
        self.last_error = ""
        self._acks_seen = False
        self._started = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="photonstream-reporter", daemon=True)
        self._thread.start()
        self.hub.subscribe(self)
        atexit.register(self.close)

    # -- what the pipeline and the buffer handler say ---------------------------------------------------------
    def __call__(self, stats: RunStats) -> None:
        elapsed = stats.elapsed
        with self._lock:
            r = self._report
            r.update(
                events_read=stats.counts["read"],
                events_sent=stats.events_sent,
                messages_sent=stats.messages_sent,
                bytes_sent=stats.bytes_sent,
                expected_events=stats.expected_events,
                elapsed_s=round(elapsed, 3),
                events_per_s=round(stats.events_per_s, 3),
                mb_per_s=round(stats.bytes_sent / elapsed / 1e6, 3) if elapsed > 0 else 0.0,
            )
            if not self._acks_seen and not self.hub.producers and stats.events_sent and r["phase"] == "starting":
                r["phase"] = "streaming"  # no buffer handler in this run: sent is all we know
                self._wake.set()
            self._dirty = True

    def on_acked(self, address: str, messages: int, nbytes: int, data_messages: int) -> None:
        with self._lock:
            r = self._report
            self._acks_seen = True
            r["address"] = r["address"] or address
            r["messages_acked"] += messages
            r["bytes_acked"] += nbytes
            r["data_acked"] += data_messages
            if r["phase"] == "starting" and r["data_acked"]:
                r["phase"] = "streaming"
                self._wake.set()
            self._dirty = True

    def on_ended(self, address: str, end: EndMessage) -> None:
        with self._lock:
            r = self._report
            r["address"] = r["address"] or address
            r["phase"] = "ended"
            r["end"] = {
                "reason": end.reason,
                "error": end.error,
                "events_sent": end.events_sent,
                "counts": dict(end.counts),
            }
            self._dirty = True
        self._wake.set()

    # -- sending ----------------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = max(time.time_ns(), self._seq + 1)  # increases across the job's processes too
        return self._seq

    def flush(self) -> bool:
        """Send the current report if something changed; True if it was sent (or nothing was due)."""
        with self._lock:
            if not self._dirty:
                return True
            body_obj = {**self._report, "seq": self._next_seq()}
            phase = self._report["phase"]
            self._dirty = False
        body = json.dumps(body_obj, separators=(",", ":")).encode()
        try:
            self._send(body, signed_headers(self.secret, self.path, body))
        except (OSError, ValueError) as exc:  # urllib's URLError and HTTPError are OSErrors
            self.failures += 1
            self.last_error = str(exc)
            with self._lock:
                self._dirty = True  # try again with the newest figures
            log.debug("progress report to %s failed: %s", self.url, exc)
            return False
        self.sent += 1
        self._sent_phase = phase
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the thread and send the last report (called at exit)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self.hub.unsubscribe(self)
        deadline = time.monotonic() + timeout_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(0.2)


def chain(*callbacks: Callable[[RunStats], None] | None) -> Callable[[RunStats], None] | None:
    """One progress callback calling each given one (None entries skipped; None if none is left)."""
    present = [c for c in callbacks if c is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def call_all(stats: RunStats) -> None:
        for callback in present:
            callback(stats)

    return call_all


def reporter_from_env(environ: dict[str, str] | None = None) -> Reporter | None:
    """A Reporter when the API launched this job (its URL in the environment, its secret there or in the job's
    secrets file), else None."""
    from photonstream.job_secrets import job_secret

    env = os.environ if environ is None else environ
    url, secret = env.get(URL_ENV), job_secret(SECRET_ENV, env)  # the secret: from the job's secrets file
    if not url or not secret:
        return None
    try:
        interval = float(env.get(INTERVAL_ENV, "1.0"))
    except ValueError:
        interval = 1.0
    return Reporter(
        url,
        secret,
        ca_file=env.get(CA_ENV) or None,
        cert=env.get(CERT_ENV) or None,
        key=env.get(KEY_ENV) or None,
        interval_s=max(0.05, interval),
    )
