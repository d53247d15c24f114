"""A facility and an HPC centre joined by a simulated WAN link, for the cross-facility test and ``bench wan``.

Inside a ``NamespacePair`` (``photonstream.testing.netns``): the facility namespace runs ``photonstream serve``
(HTTPS with client certificates required, from our own CA; the embedded buffer, its security ``curve`` or
``none``; the local job backend), the buffer advertised to consumers at the relay's address. The HPC namespace
runs the link: our relay (``photonstream.testing.wan``) with a one-way delay and a cap shared by every connection,
the API on one port and the buffer on another, so the HPC side reaches the facility only through it. There a
user (``photonstream.testing.remote_requester``) asks for a stream with her certificate and hands the answer's
``data_endpoint`` to workers of one lossless group (``photonstream.testing.stream_worker``), which record every
frame their application got.

``request_stream`` runs one such stream and returns what every party saw (``StreamOutcome``); the caller judges
it. ``raw_tcp_transfer`` sends the same bytes as plain TCP through the same kind of relay (the baseline), and
``goodput_mbps`` measures both the same way. Needs root and iproute2, as the namespaces do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from photonstream.testing.netns import NamespacePair
from photonstream.testing.stream_worker import read_records

REPO = Path(__file__).resolve().parents[2]
BUFFER_PORT = 5600  # in the facility
RELAY_PORT = 5601  # in the HPC namespace: the buffer through the link
API_PORT = 8443  # in the facility
API_RELAY_PORT = 8444  # in the HPC namespace: the API through the link
EXPERIMENT = "xfacility"
GROUP = "workers"


class CrossFacilityError(RuntimeError):
    """A party of the setup failed or never answered; the message says which, with its error output."""


@dataclass(frozen=True)
class Link:
    """The wide-area link: one-way delay (each direction) and the cap per direction, shared by all connections."""

    delay_ms: float = 25.0
    rate_mbps: float = 200.0

    def transfer_s(self, payload_bytes: int) -> float:
        """How long ``payload_bytes`` take at the cap alone."""
        return payload_bytes * 8 / (self.rate_mbps * 1e6)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def start_relay(pair: NamespacePair, link: Link, *also: str) -> subprocess.Popen[str]:
    """The link, in the HPC namespace: 127.0.0.1:RELAY_PORT there is the facility's BUFFER_PORT (and ``also``)."""
    relay = pair.popen(
        pair.hpc,
        python("-m", "photonstream.testing.wan", "--listen", f"127.0.0.1:{RELAY_PORT}",
               "--target", f"{pair.facility_address}:{BUFFER_PORT}", *(f"--also={route}" for route in also),
               "--delay-ms", str(link.delay_ms), "--rate-mbps", str(link.rate_mbps)),
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert relay.stdout is not None
    if not relay.stdout.readline():
        raise CrossFacilityError(f"the relay did not start (exit {relay.wait(10)})")
    return relay


def relay_counters(relay: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop the relay and return its counters (bytes per direction; the ``also`` routes' under ``also``)."""
    relay.send_signal(signal.SIGTERM)
    assert relay.stdout is not None
    counters = json.loads(relay.stdout.readline())
    relay.wait(10)
    return dict(counters)


def stop(*processes: subprocess.Popen[Any]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def finish(process: subprocess.Popen[str], what: str, timeout: float = 60) -> str:
    """Wait for ``process`` to end well and return its output; a hang or a failure raises with its stderr."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise CrossFacilityError(f"{what} did not finish in {timeout:g} s") from None
    if process.returncode != 0:
        raise CrossFacilityError(f"{what} failed (exit {process.returncode}): {(err or '')[-2000:]}")
    return out or ""


class Pki:
    """Our CA: the API's service certificate (for the facility's link address too), alice, and the jobs' client."""

    def __init__(self, root: Path, facility_address: str) -> None:
        from photonstream.api.auth.ca import CertificateAuthority

        ca = CertificateAuthority.init(root / "ca", common_name="cross-facility CA", days=1)
        self.ca_dir = ca.directory
        self.ca_certificate = ca.directory / "ca.crt"
        service = ca.issue_service("api", hosts=[facility_address], days=1, out_dir=root / "service")
        self.service = (service.certificate, service.private_key)
        alice = ca.issue_user("alice", [EXPERIMENT], days=1, out_dir=root / "users")
        self.alice = (alice.certificate, alice.private_key)
        jobs = ca.issue_user("facility-jobs", [], days=1, out_dir=root / "users")  # TLS to report progress
        self.jobs = (jobs.certificate, jobs.private_key)


class ApiSite:
    """``photonstream serve`` in the facility; the relay (buffer and API ports) in the HPC namespace."""

    def __init__(self, pair: NamespacePair, root: Path, security: str, link: Link, credit: int = 8) -> None:
        self.pair = pair
        self.root = root
        self.security = security
        self.link = link
        self.credit = credit
        self.pki = Pki(root / "pki", pair.facility_address)
        buffer = f"tcp://{pair.facility_address}:{BUFFER_PORT}"
        settings = {
            "state_dir": str(root / "state"), "ca_dir": str(self.pki.ca_dir),
            "client_certificates": "required", "tokens": False,
            "job_backend": "local", "job_backends": ["local"], "launcher_interval_s": 0.2,
            "buffer": "embedded", "buffer_bind": buffer, "buffer_endpoint": buffer, "buffer_token_bind": None,
            "buffer_security": security,
            "buffer_advertised_endpoint": f"tcp://127.0.0.1:{RELAY_PORT}",  # the buffer as the HPC side reaches it
            "report_client_cert": str(self.pki.jobs[0]), "report_client_key": str(self.pki.jobs[1]),
        }  # fmt: skip
        config = root / "api.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.log = (root / "api.log").open("w")
        self.api = pair.popen(
            pair.facility,
            python("-m", "photonstream", "serve", "--config", str(config), "--host", pair.facility_address,
                   "--port", str(API_PORT), "--cert", str(self.pki.service[0]), "--key", str(self.pki.service[1])),
            cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.relay = start_relay(pair, link, f"127.0.0.1:{API_RELAY_PORT}={pair.facility_address}:{API_PORT}")
        self.url = f"https://127.0.0.1:{API_RELAY_PORT}"  # the API as the HPC side reaches it: across the link

    def worker(self, name: str) -> tuple[subprocess.Popen[str], Path]:
        """A worker in the HPC namespace, imported and waiting for the stream's data endpoint on stdin."""
        out = self.root / f"worker-{name}.jsonl"
        process = self.pair.popen(
            self.pair.hpc,
            python("-m", "photonstream.testing.stream_worker", "-", "-", str(out), "--group", GROUP,
                   "--credit", str(self.credit), "--timeout-s", "60"),
            cwd=REPO, env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        return process, out

    def requester(self, request: dict[str, Any]) -> subprocess.Popen[str]:
        """alice at the HPC site: asks for ``request`` through the typed client, then follows it to its end."""
        path = self.root / "request.json"
        path.write_text(json.dumps(request))
        return self.pair.popen(
            self.pair.hpc,
            python("-m", "photonstream.testing.remote_requester", self.url, str(path),
                   "--cert", str(self.pki.alice[0]), "--key", str(self.pki.alice[1]),
                   "--ca", str(self.pki.ca_certificate), "--wait-s", "90"),
            cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def api_log(self) -> str:
        return (self.root / "api.log").read_text()[-3000:]

    def stop(self) -> None:
        stop(self.relay, self.api)
        self.log.close()


def stream_request(events: int, shape: Sequence[int]) -> dict[str, Any]:
    """Synthetic diffraction frames of ``shape`` (uint16), msgpack, to one lossless group."""
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": list(shape), "events": events,
              "seed": 1}  # fmt: skip
    return {
        "experiment": EXPERIMENT,
        "runs": [1],
        "pipeline": {"source": source, "serializer": {"type": "msgpack"}},
        "consumers": [{"name": GROUP, "policy": "lossless"}],
    }


@dataclass
class StreamOutcome:
    """What each party saw of one stream requested across the link."""

    answer: dict[str, Any]  # the requester's first line: requested_at, answered_at, stream_id, data_endpoint
    final: dict[str, Any]  # its last line: {"final": the stream as the API showed it at the end, "seen_at": T}
    outs: list[Path]  # each worker's records (photonstream.testing.stream_worker)
    counters: dict[str, Any]  # the relay's (buffer route; the API's under "also")

    @property
    def summaries(self) -> list[dict[str, Any] | None]:
        return [read_records(out)[1] for out in self.outs]

    def frames(self) -> list[dict[str, Any]]:
        """Every frame record of every worker, in arrival order."""
        return sorted((f for out in self.outs for f in read_records(out)[0]), key=lambda f: f["t"])


def request_stream(site: ApiSite, events: int, shape: Sequence[int], workers: int = 2) -> StreamOutcome:
    """Start the workers, have alice request ``events`` frames, hand them the endpoint, wait for every party."""
    started = [site.worker(chr(ord("a") + i)) for i in range(workers)]
    for process, out in started:
        assert process.stdout is not None
        if process.stdout.readline().strip() != '{"ready": true}':
            raise CrossFacilityError(f"worker {out.name} did not start: {finish(process, out.name, 10)}")
    requester = site.requester(stream_request(events, shape))
    assert requester.stdout is not None
    line = requester.stdout.readline()
    answer = json.loads(line) if line else {"error": "no answer"}
    if "data_endpoint" not in answer:
        stop(requester, *(process for process, _ in started))
        raise CrossFacilityError(f"the request failed: {answer}; API log: {site.api_log()}")
    for process, _ in started:  # the user hands the answer to her workers
        assert process.stdin is not None
        process.stdin.write(json.dumps(answer["data_endpoint"]) + "\n")
        process.stdin.flush()
    payload = events * _frame_bytes(shape)
    timeout = 90 + 3 * site.link.transfer_s(payload)
    for process, out in started:
        finish(process, f"worker {out.name}", timeout=timeout)
    final = json.loads(finish(requester, "the requester (following the stream)", timeout=60).splitlines()[-1])
    counters = relay_counters(site.relay)
    return StreamOutcome(answer=answer, final=final, outs=[out for _, out in started], counters=counters)


def _frame_bytes(shape: Sequence[int]) -> int:
    size = 2  # uint16 pixels
    for n in shape:
        size *= n
    return size


def goodput_mbps(frames: list[dict[str, Any]], skip: int) -> float:
    """Payload rate (Mb/s) the applications got while frames flowed, from the records of every receiver.

    The first ``skip`` frames (records in arrival order) are left out of the bytes and start the clock: they may
    have been on their way (inside the relay, TCP and ZeroMQ queues) before the first one arrived. Give both the
    stream and the baseline the same ``skip``.
    """
    skip = min(skip, max(0, len(frames) - 3))  # a short run: keep at least two intervals
    settled = frames[skip:]
    if len(settled) < 2 or settled[-1]["t"] <= settled[0]["t"]:
        raise CrossFacilityError(f"too few frames to measure a rate ({len(frames)})")
    return sum(f["bytes"] for f in settled[1:]) * 8 / (settled[-1]["t"] - settled[0]["t"]) / 1e6


@dataclass
class RawOutcome:
    """What the baseline's receivers saw: their records and the relay's counters."""

    started_at: float  # time.time() as the receivers were started
    outs: list[Path]
    counters: dict[str, Any]

    def frames(self) -> list[dict[str, Any]]:
        return sorted((f for out in self.outs for f in read_records(out)[0]), key=lambda f: f["t"])

    @property
    def payload_bytes(self) -> int:
        return sum(int((read_records(out)[1] or {}).get("payload_bytes", 0)) for out in self.outs)


def raw_tcp_transfer(
    pair: NamespacePair, link: Link, root: Path, frames: int, frame_bytes: int, connections: int
) -> RawOutcome:
    """The baseline: ``frames`` × ``frame_bytes`` as plain TCP from the facility to ``connections`` receivers."""
    sender = pair.popen(
        pair.facility,
        python("-m", "photonstream.testing.raw_tcp", "send", "--bind", f"{pair.facility_address}:{BUFFER_PORT}",
               "--frames", str(frames), "--frame-bytes", str(frame_bytes), "--connections", str(connections)),
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sender.stdout is not None
    if not sender.stdout.readline():
        raise CrossFacilityError(f"the raw TCP sender did not start: {finish(sender, 'the sender', 10)}")
    relay = start_relay(pair, link)
    try:
        outs = [root / f"raw-{i}.jsonl" for i in range(connections)]

        def receiver(out: Path) -> list[str]:
            return python("-m", "photonstream.testing.raw_tcp", "receive", "--connect", f"127.0.0.1:{RELAY_PORT}",
                          "--frame-bytes", str(frame_bytes), "--out", str(out))  # fmt: skip

        options: dict[str, Any] = {"cwd": REPO, "env": environment(), "stdout": subprocess.PIPE,
                                   "stderr": subprocess.PIPE, "text": True}  # fmt: skip
        started_at = time.time()
        receivers = [pair.popen(pair.hpc, receiver(out), **options) for out in outs]
        timeout = 60 + 3 * link.transfer_s(frames * frame_bytes)
        for i, process in enumerate(receivers):
            finish(process, f"raw TCP receiver {i}", timeout=timeout)
        finish(sender, "the raw TCP sender", timeout=30)
    finally:
        counters = relay_counters(relay) if relay.poll() is None else {}
        stop(sender)
    return RawOutcome(started_at=started_at, outs=outs, counters=counters)
