"""Across a simulated WAN: a facility namespace (API + buffer + producer) and an HPC namespace (the user and workers).

The two network namespaces are joined by a veth pair (169.254.77.1/30 ↔ .2/30, addresses that exist only in
these namespaces). The link's delay (25 ms each way) and cap (200 Mb/s, shared by every connection) live in our
relay (``photonstream.testing.wan``), which runs in the HPC namespace: the HPC side reaches the facility only
through it, the API on one port and the buffer on another.

1. Request to first frame, and goodput, through the API (parametrized: CURVE, and no buffer security for
   comparison). The facility runs ``photonstream serve`` (HTTPS, client certificates required, from our own CA;
   the embedded buffer; the local job backend), its buffer advertised to consumers at the relay's address
   (``buffer_advertised_endpoint``). At the HPC site a user asks for a stream with her certificate through the
   typed client and hands the answer's ``data_endpoint`` (address, stream, CURVE keys) to two waiting workers of
   one lossless group. Every frame reaches exactly one of them, the stream ends ``completed`` (as the API tells
   the user across the link), and the figures go to the report: request → first frame, goodput against the cap.
2. Cut and heal mid-stream (a plain buffer and producer in the facility): the relay resets every connection and
   refuses new ones for a while, then heals. The workers rejoin; together they still see every frame, none twice
   within one worker, and the stream ends completed.

Figures: ``tests/faults/support.report`` (printed with ``-s``, kept in ``artifacts/faults.json``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from photonstream.testing.netns import NamespacePair, unavailable_reason
from tests.faults.support import report, summary_of, tally
from tests.stream_worker import read_records

REPO = Path(__file__).resolve().parents[1]
BUFFER_PORT = 5600
RELAY_PORT = 5601
API_PORT = 8443
API_RELAY_PORT = 8444
DELAY_MS = 25.0
RATE_MBPS = 200.0
SHAPE = [384, 256]  # 192 KiB frames
CREDIT = 8
EXPERIMENT = "xfacility"
GROUP = "workers"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pair() -> Iterator[NamespacePair]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("PHOTONSTREAM_REQUIRE_NETNS") == "1":
            pytest.fail(f"network namespaces are required here (PHOTONSTREAM_REQUIRE_NETNS=1): {reason}")
        pytest.skip(f"network namespaces unavailable: {reason}")
    with NamespacePair() as namespaces:
        yield namespaces


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def start_relay(pair: NamespacePair, *also: str) -> subprocess.Popen[str]:
    """The link, in the HPC namespace: 127.0.0.1:RELAY_PORT there is the facility's buffer (and ``also`` more)."""
    relay = pair.popen(
        pair.hpc,
        python("-m", "photonstream.testing.wan", "--listen", f"127.0.0.1:{RELAY_PORT}",
               "--target", f"{pair.facility_address}:{BUFFER_PORT}", *(f"--also={route}" for route in also),
               "--delay-ms", str(DELAY_MS), "--rate-mbps", str(RATE_MBPS)),
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert relay.stdout is not None
    json.loads(relay.stdout.readline())  # listening
    return relay


def relay_counters(relay: subprocess.Popen[str]) -> dict[str, Any]:
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
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{what} did not finish in {timeout} s") from None
    assert process.returncode == 0, f"{what} failed: {(err or '')[-2000:]}"
    return out or ""


# --- 1. through the API ------------------------------------------------------------------------------------------


class Pki:
    """Our CA: the API's service certificate (for the facility's link address too), alice, and the jobs' client."""

    def __init__(self, root: Path, facility_address: str) -> None:
        from photonstream.api.auth.ca import CertificateAuthority

        ca = CertificateAuthority.init(root / "ca", common_name="cross-facility test CA", days=1)
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

    def __init__(self, pair: NamespacePair, tmp_path: Path, security: str) -> None:
        self.pair = pair
        self.tmp_path = tmp_path
        self.security = security
        self.pki = Pki(tmp_path / "pki", pair.facility_address)
        buffer = f"tcp://{pair.facility_address}:{BUFFER_PORT}"
        settings = {
            "state_dir": str(tmp_path / "state"), "ca_dir": str(self.pki.ca_dir),
            "client_certificates": "required", "tokens": False,
            "job_backend": "local", "job_backends": ["local"], "launcher_interval_s": 0.2,
            "buffer": "embedded", "buffer_bind": buffer, "buffer_endpoint": buffer, "buffer_token_bind": None,
            "buffer_security": security,
            "buffer_advertised_endpoint": f"tcp://127.0.0.1:{RELAY_PORT}",  # the buffer as the HPC side reaches it
            "report_client_cert": str(self.pki.jobs[0]), "report_client_key": str(self.pki.jobs[1]),
        }  # fmt: skip
        config = tmp_path / "api.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.log = (tmp_path / "api.log").open("w")
        self.api = pair.popen(
            pair.facility,
            python("-m", "photonstream", "serve", "--config", str(config), "--host", pair.facility_address,
                   "--port", str(API_PORT), "--cert", str(self.pki.service[0]), "--key", str(self.pki.service[1])),
            cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.relay = start_relay(pair, f"127.0.0.1:{API_RELAY_PORT}={pair.facility_address}:{API_PORT}")
        self.url = f"https://127.0.0.1:{API_RELAY_PORT}"  # the API as the HPC side reaches it: across the link

    def worker(self, name: str) -> tuple[subprocess.Popen[str], Path]:
        """A worker in the HPC namespace, imported and waiting for the stream's data endpoint on stdin."""
        out = self.tmp_path / f"worker-{name}.jsonl"
        process = self.pair.popen(
            self.pair.hpc,
            python("-m", "tests.stream_worker", "-", "-", str(out), "--group", GROUP, "--credit", str(CREDIT),
                   "--timeout-s", "60"),
            cwd=REPO, env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        return process, out

    def requester(self, request: dict[str, Any]) -> subprocess.Popen[str]:
        """alice at the HPC site: asks for ``request`` through the typed client, then follows it to its end."""
        path = self.tmp_path / "request.json"
        path.write_text(json.dumps(request))
        return self.pair.popen(
            self.pair.hpc,
            python("-m", "tests.remote_requester", self.url, str(path), "--cert", str(self.pki.alice[0]),
                   "--key", str(self.pki.alice[1]), "--ca", str(self.pki.ca_certificate), "--wait-s", "90"),
            cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def api_log(self) -> str:
        return (self.tmp_path / "api.log").read_text()[-3000:]

    def stop(self) -> None:
        stop(self.relay, self.api)
        self.log.close()


@pytest.fixture(params=["curve", "none"])
def api_site(request: pytest.FixtureRequest, pair: NamespacePair, tmp_path: Path) -> Iterator[ApiSite]:
    started = ApiSite(pair, tmp_path, request.param)
    yield started
    started.stop()


def stream_request(events: int) -> dict[str, Any]:
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": SHAPE, "events": events, "seed": 1}
    return {
        "experiment": EXPERIMENT,
        "runs": [1],
        "pipeline": {"source": source, "serializer": {"type": "msgpack"}},
        "consumers": [{"name": GROUP, "policy": "lossless"}],
    }


def test_a_stream_requested_across_the_link_reaches_the_workers_once_each(api_site: ApiSite) -> None:
    security = api_site.security
    events = 240
    workers = [api_site.worker(name) for name in ("a", "b")]
    for process, out in workers:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.strip() == '{"ready": true}', f"worker {out.name} did not start: {process.stderr}"
    requester = api_site.requester(stream_request(events))
    assert requester.stdout is not None
    line = requester.stdout.readline()
    answer = json.loads(line) if line else {"error": "no answer"}
    assert "data_endpoint" in answer, f"the request failed: {answer}; API log: {api_site.api_log()}"
    endpoint = answer["data_endpoint"]
    assert endpoint["address"] == f"tcp://127.0.0.1:{RELAY_PORT}"  # advertised: the buffer through the link
    assert endpoint["security"] == security
    if security == "curve":
        assert endpoint["curve"]["client_secret_key"], "the create answer carries the consumer's secret key"
    for process, _ in workers:  # the user hands the answer to her workers
        assert process.stdin is not None
        process.stdin.write(json.dumps(endpoint) + "\n")
        process.stdin.flush()
    for process, out in workers:
        finish(process, f"worker {out.name}", timeout=90)
    final = json.loads(finish(requester, "the requester (following the stream)", timeout=60).splitlines()[-1])
    counters = relay_counters(api_site.relay)

    summaries = [summary_of(out) for _, out in workers]
    seen = tally(events, *(out for _, out in workers))
    assert seen.numbers() == (0, 0), f"lost, duplicated: {seen.numbers()}"
    assert seen.within_one == 0
    assert all(seen.per_worker), "both workers of the group got frames"
    assert [s["end_reason"] for s in summaries] == ["completed", "completed"]
    assert [s["error"] for s in summaries] == [None, None]
    assert final["final"]["state"] == "completed", final["final"]["reason"]

    payload = sum(s["payload_bytes"] for s in summaries)
    first = min(s["first_frame_at"] for s in summaries)
    streaming_at = dt.datetime.fromisoformat(final["final"]["streaming_at"]).timestamp()
    figures = {
        "security": security,
        "frames": events,
        "frame_kib": SHAPE[0] * SHAPE[1] * 2 // 1024,
        "payload_mb": round(payload / 1e6, 2),
        "link_overhead": round(counters["bytes_down"] / payload - 1, 5),  # framing, handshakes, CURVE's boxes
        "api_link_kb": round(counters["also"][0]["bytes_down"] / 1e3, 1),
        "delay_ms_each_way": DELAY_MS,
        "cap_mbps": RATE_MBPS,
        **goodput(*(out for _, out in workers)),
        "create_round_trip_ms": round((answer["answered_at"] - answer["requested_at"]) * 1000, 1),
        "request_to_job_streaming_ms": round((streaming_at - answer["requested_at"]) * 1000, 1),
        "request_to_first_frame_ms": round((first - answer["requested_at"]) * 1000, 1),
        "subscribe_to_first_frame_ms": [round((s["first_frame_at"] - s["subscribed_at"]) * 1000, 1) for s in summaries],
        "frames_per_worker": [len(w) for w in seen.per_worker],
    }
    report(f"cross_facility_api_{security}", **figures)
    # the create call crossed the link (on the connection the health check opened: one round trip at least)
    assert figures["create_round_trip_ms"] >= 2 * DELAY_MS
    # ... and the first frame needed the job to start and the buffer's subscription to cross it too
    assert figures["request_to_first_frame_ms"] >= figures["create_round_trip_ms"] + 2 * DELAY_MS
    # the frames never cross faster than the cap (the token bucket's burst is the tolerance) ...
    assert figures["goodput_mbps"] <= RATE_MBPS * 1.05, figures
    # ... and a bulk transfer over one delayed link fills a fair share of it
    assert figures["goodput_mbps"] >= RATE_MBPS * 0.5, figures


def goodput(*outs: Path) -> dict[str, float]:
    """Payload rate the applications got while frames flowed, from the group's first frames on to its last.

    The first ``2 × CREDIT`` frames the group received are left out of the bytes and start the clock: they may
    have been on their way (inside the relay, TCP and ZeroMQ queues) before the first one arrived.
    """
    frames = sorted((f for out in outs for f in read_records(out)[0]), key=lambda f: f["t"])
    settled = frames[2 * CREDIT - 1 :]
    mbps = sum(f["bytes"] for f in settled[1:]) * 8 / (settled[-1]["t"] - settled[0]["t"]) / 1e6
    return {"goodput_mbps": round(mbps, 1), "goodput_of_cap": round(mbps / RATE_MBPS, 3)}


# --- 2. cut and heal ---------------------------------------------------------------------------------------------


class Site:
    """A plain buffer (facility) and the relay (HPC) of one test, stopped at the end."""

    def __init__(self, pair: NamespacePair, tmp_path: Path) -> None:
        self.pair = pair
        self.tmp_path = tmp_path
        self.buffer = pair.popen(
            pair.facility,
            python("-m", "photonstream.buffer.cli", "serve", "--bind",
                   f"tcp://{pair.facility_address}:{BUFFER_PORT}", "--member-timeout-s", "2", "--ack-timeout-s", "5"),
            cwd=REPO, env=environment(), stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.buffer.stderr is not None
        lines = [self.buffer.stderr.readline()]
        while "buffer serving on" not in lines[-1] and len(lines) < 3:  # a warning (no authentication) comes first
            lines.append(self.buffer.stderr.readline())
        assert "buffer serving on" in lines[-1], lines
        self.relay = start_relay(pair)
        self.endpoint_hpc = f"tcp://127.0.0.1:{RELAY_PORT}"  # the buffer as the HPC side sees it: through the link
        self.endpoint_facility = f"tcp://{pair.facility_address}:{BUFFER_PORT}"

    def producer(self, run: int, events: int, rate_hz: float = 0.0) -> subprocess.Popen[str]:
        config = {
            "stream": {"experiment": EXPERIMENT, "run": run, "stream_id": "det"},
            "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": SHAPE, "events": events,
                       "rate_hz": rate_hz, "seed": run},
            "handlers": [{"type": "buffer", "address": self.endpoint_facility, "send_timeout_s": 60}],
        }  # fmt: skip
        path = self.tmp_path / f"run{run}.yaml"
        path.write_text(yaml.safe_dump(config))
        return self.pair.popen(
            self.pair.facility,
            python("-m", "photonstream", "run", str(path), "--quiet", "--json"),
            cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def worker(self, run: int, name: str) -> tuple[subprocess.Popen[str], Path]:
        out = self.tmp_path / f"run{run}-{name}.jsonl"
        process = self.pair.popen(
            self.pair.hpc,
            python("-m", "tests.stream_worker", self.endpoint_hpc, f"{EXPERIMENT}/{run}/det", str(out),
                   "--group", GROUP, "--credit", str(CREDIT), "--timeout-s", "30"),
            cwd=REPO, env=environment(), stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        return process, out

    def stop(self) -> None:
        stop(self.relay, self.buffer)


@pytest.fixture
def site(pair: NamespacePair, tmp_path: Path) -> Iterator[Site]:
    started = Site(pair, tmp_path)
    yield started
    started.stop()


def test_a_cut_and_heal_mid_stream_loses_and_repeats_nothing(site: Site) -> None:
    events = 150
    workers = [site.worker(run=2, name=name) for name in ("a", "b")]
    time.sleep(1.0)  # both have subscribed (the buffer keeps the group until the producer starts)
    producer = site.producer(run=2, events=events, rate_hz=60.0)

    def frames_seen() -> int:
        return sum(len(read_records(out)[0]) for _, out in workers)

    deadline = time.monotonic() + 30
    while frames_seen() < events // 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before_cut = frames_seen()
    assert before_cut >= events // 3, "the workers did not get going"
    site.relay.send_signal(signal.SIGUSR1)  # cut: every connection reset, new ones refused
    time.sleep(1.5)
    during_cut = frames_seen() - before_cut
    site.relay.send_signal(signal.SIGUSR2)  # heal
    finish(producer, "the producer")
    for process, out in workers:
        finish(process, f"worker {out.name}")
    counters = relay_counters(site.relay)
    summaries = [summary_of(out) for _, out in workers]
    seen = tally(events, *(out for _, out in workers))
    report(
        "cross_facility_cut_and_heal",
        frames=events,
        seen_before_cut=before_cut,
        seen_during_cut=during_cut,
        lost=seen.lost,
        duplicates_within_one_worker=seen.within_one,
        duplicates_across_workers=seen.duplicates,
        duplicates_dropped_by_subscriptions=sum(s["duplicates_dropped"] for s in summaries),
        rejoins=[s["rejoins"] for s in summaries],
        redelivered=max(s["redelivered"] for s in summaries),
        connections_reset=counters["reset"],
        connections_refused=counters["refused"],
    )
    assert counters["reset"] >= 2  # the cut really broke both workers' connections
    assert sum(s["rejoins"] for s in summaries) >= 2
    assert seen.lost == 0
    assert seen.within_one == 0  # each application sees a frame at most once
    # The cut (1.5 s) is a little shorter than the buffer's member timeout (2 s): a worker back in time rejoins as
    # the same member, re-sends the acks the cut lost and gets its own unacked frames back, so nothing reaches the
    # other worker (measured: 0). One back too late (a loaded machine) has its unacked frames, at most CREDIT, given
    # to the other worker; tests/faults/test_link_cut.py pins the in-time case exactly.
    assert seen.duplicates <= CREDIT * len(workers)
    assert [s["end_reason"] for s in summaries] == ["completed", "completed"]
