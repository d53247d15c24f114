"""``photonstream request watch`` (the real command, in a subprocess) against the real service running a stream:
besides the state changes it shows how many events went out of how many, and at what rate."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.adversarial.test_create_race import running_service
from tests.api.harness import Pki, stream_request
from tests.api.servers import client_tls
from tests.store.databases import DatabaseSpec

EVENTS = 60


def test_watch_shows_counts_and_rates_then_the_end(pki: Pki, tmp_path: Path) -> None:
    sqlite_spec = DatabaseSpec("sqlite", tmp_path)
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": EVENTS,
              "rate_hz": 20.0}  # fmt: skip
    with (
        running_service(sqlite_spec, pki, tmp_path / "state") as (api, url),
        httpx.Client(base_url=url, verify=client_tls(pki, "alice"), timeout=60) as alice,
    ):
        api.services().settings.report_url = url  # known once the server listens: its jobs report progress here
        created = alice.post("/v1/streams", json=stream_request(pipeline={"source": source}))
        assert created.status_code == 201, created.text
        cert, key = pki.certs["alice"]
        auth = ["--url", url, "--cert", str(cert), "--key", str(key), "--ca-cert", str(pki.ca.directory / "ca.crt")]
        watched = subprocess.run(
            [sys.executable, "-m", "photonstream", "request", *auth, "watch", created.json()["id"], "--every", "0.5"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    assert any("queued → " in line for line in lines) and any("→ completed" in line for line in lines), lines
    counts = [line for line in lines if re.search(r"\d+/60 events sent, [\d.,]+ ev/s, [\d.,]+ [kM]B/s", line)]
    assert len(counts) >= 2, lines  # a 3 s run at 20 events/s, shown at most every 0.5 s: counts while it runs
    sent = [int(re.search(r"(\d+)/60 events sent", line).group(1)) for line in counts]  # type: ignore[union-attr]
    assert sent == sorted(sent) and sent[-1] == EVENTS and sent[0] < EVENTS, counts
    rates = [float(re.search(r"([\d.]+) ev/s", line).group(1)) for line in counts]  # type: ignore[union-attr]
    assert 5 < rates[-1] < 40, counts  # asked 20 events/s
    assert counts[-1].endswith("60 acked by the buffer, ended completed"), counts
    assert lines.index(counts[0]) > lines.index(next(line for line in lines if "→ streaming" in line)), lines
    assert lines[-1].endswith("ended completed"), lines
